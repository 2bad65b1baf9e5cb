/** Events: the list and the Server-Sent Events stream over the `events` table (ADR 0041). */
export * from './event.schemas.js';
export * from './event-feed.js';
export * from './events.controller.js';
export * from './events.module.js';
export * from './events.service.js';
export * from './events.settings.js';
