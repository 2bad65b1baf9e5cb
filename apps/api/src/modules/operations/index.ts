/** Operations: long-running actions, one BullMQ job each; reads, waits and status transitions. */
export * from './operation.errors.js';
export * from './operation.schemas.js';
export * from './operation.service.js';
export * from './operation.types.js';
export * from './operations.controller.js';
export * from './operations.module.js';
