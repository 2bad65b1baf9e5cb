/**
 * Authentication: API keys (`hgr_<prefix>_<secret>`, SHA-256 verified), the global guard and the
 * key verifier. The decorators (`@Public()`, `@Roles()`, `@Ctx()`) live in common/http.
 */
export * from './api-key-secret.js';
export * from './auth.guard.js';
export * from './auth.module.js';
export * from './auth.service.js';
