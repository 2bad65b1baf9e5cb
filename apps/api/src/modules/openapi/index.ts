/** The OpenAPI 3.1 document generated from the endpoints' zod schemas, and its docs page. */
export * from './openapi.builder.js';
export * from './openapi.controller.js';
export * from './openapi.module.js';
export * from './openapi.service.js';
