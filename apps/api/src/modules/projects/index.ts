/**
 * Projects (tenants) and quotas: `/v1/projects`, `assertWithinQuota` for the VM use cases, and
 * `ensureBootstrap` for the set-up command.
 */
export * from './ensure-bootstrap.js';
export * from './project.schemas.js';
export * from './projects.controller.js';
export * from './projects.module.js';
export * from './projects.service.js';
export * from './quota.js';
