/** Boot images registered on storage pools (`/v1/images`). */
export * from './image.schemas.js';
export * from './images.controller.js';
export * from './images.module.js';
export * from './images.service.js';
