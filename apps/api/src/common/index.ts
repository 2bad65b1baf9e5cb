/**
 * The HTTP framework of the api, reusable by every feature module: `@Resource`/`@Endpoint` (routes,
 * validation and OpenAPI from one zod spec), `@ValidBody/@ValidQuery/@ValidParams`, `@Ctx()` and
 * the access decorators, `HttpResult`/`withEtag`/`accepted`, ETags and If-Match, pagination,
 * idempotency keys, logging. See apps/api/README.md.
 */
export * from './common.module.js';
export * from './etag/etag.js';
export * from './http/access.decorators.js';
export * from './http/endpoint.decorator.js';
export * from './http/http.interceptors.js';
export * from './http/http-result.js';
export * from './http/problem.filter.js';
export * from './http/request-context.js';
export * from './http/request-input.js';
export * from './http/schemas.js';
export * from './idempotency/idempotency.interceptor.js';
export * from './idempotency/idempotency.service.js';
export * from './logging/logger.js';
export * from './pagination/pagination.js';
export * from './util/canonical-json.js';
export * from './util/prisma-helpers.js';
