/**
 * @hangar/vmm-core: launch, control and live-migrate QEMU/KVM guests.
 * The only package that touches QEMU; the agent uses it through the `Hypervisor` interface.
 */
export * from './accel/index.js';
export * from './cloud-init/index.js';
export * as qemuImg from './disk/index.js';
export * from './driver/fake/fake-driver.js';
export * from './driver/hypervisor.js';
export * from './driver/qemu/argv.js';
export * from './driver/qemu/qemu-driver.js';
export * from './errors.js';
export * from './metrics/index.js';
export * from './network/index.js';
export * as qmp from './qmp/index.js';
export { QmpCommands, QmpMonitor } from './qmp/index.js';
export * from './spec/vm-spec.js';
export * from './state/vm-state.js';
export { runCommand } from './util/exec.js';
export { KeyedMutex } from './util/mutex.js';
export { resolveInside, resolvePoolPath, vmRuntimePaths } from './util/paths.js';
export { isProcessAlive, isQemuWithPidfile, readPidfile, waitForExit } from './util/process.js';
export { Reverter } from './util/reverter.js';
