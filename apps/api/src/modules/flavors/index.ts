/** Flavors: VM sizes (`/v1/flavors`). */
export * from './flavor.schemas.js';
export * from './flavors.controller.js';
export * from './flavors.module.js';
export * from './flavors.service.js';
