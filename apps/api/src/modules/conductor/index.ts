/**
 * The conductor: BullMQ worker running operations (one job per operation), the sweeper, host
 * liveness, the VM spec builder and the modules that wire the VM backend from the configuration.
 */
export * from './conductor.module.js';
export * from './conductor.worker.js';
export * from './control-plane.settings.js';
export * from './control-plane-core.module.js';
export * from './operation-runner.js';
export * from './operation-sweeper.js';
export * from './steps/step-context.js';
export * from './vm-spec.builder.js';
