/** API key management (`/v1/api-keys`); verification lives in the auth module. */
export * from './api-key.schemas.js';
export * from './api-keys.controller.js';
export * from './api-keys.module.js';
export * from './api-keys.service.js';
