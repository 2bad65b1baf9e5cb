export {
  type AcceleratorChoice,
  type AcceleratorProbe,
  defaultCpuModel,
  type HardwareAccelerator,
  type ProbeAcceleratorOptions,
  probeAccelerator,
  probeQemu,
  type QemuInfo,
  resolveMachineType,
} from './probe.js';
