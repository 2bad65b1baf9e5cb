/** VMs: the use cases (create, actions, delete, patch, get/list, console) and the state writer. */
export * from './vm.errors.js';
export * from './vm.schemas.js';
export * from './vm-state.writer.js';
export * from './vms.controller.js';
export * from './vms.module.js';
export * from './vms.service.js';
export * from './vms-api.module.js';
