import { readFileSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { controlv1 } from '@hangar/proto';
import type { Hypervisor, StoragePool } from '@hangar/vmm-core';
import type { PoolSample } from '../session/inventory.js';

/** This agent's version (apps/agent/package.json), reported on Register. */
export const AGENT_VERSION: string = (() => {
  try {
    // src/runtime and dist/runtime are both two levels below the package root.
    const pkg = JSON.parse(readFileSync(path.resolve(import.meta.dirname, '../../package.json'), 'utf8')) as {
      version?: string;
    };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
})();

/** Size and free space of every pool; pools that cannot be read are left out (and show as missing). */
export async function samplePools(pools: Record<string, StoragePool>): Promise<PoolSample[]> {
  const out: PoolSample[] = [];
  for (const [name, pool] of Object.entries(pools)) {
    try {
      const s = await statfs(pool.path);
      out.push({ name, totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize });
    } catch {
      // an unmounted NFS pool must not stop the sample of the others
    }
  }
  return out;
}

const ACCELERATOR = {
  kvm: controlv1.Accelerator.ACCELERATOR_KVM,
  tcg: controlv1.Accelerator.ACCELERATOR_TCG,
  fake: controlv1.Accelerator.ACCELERATOR_FAKE,
} as const;

/**
 * What Register tells the control plane about this host: cores, memory, accelerator, QEMU
 * version, machine types, CPU models, pools with free space and driver features. Probed on every
 * Register so a re-join reports current capacity.
 */
export async function probeHostInfo(options: {
  hostName: string;
  agentAddress: string;
  hypervisor: Hypervisor;
  pools: Record<string, StoragePool>;
  labels?: Record<string, string>;
}): Promise<controlv1.HostInfo> {
  const caps = await options.hypervisor.capabilities();
  const usage = new Map((await samplePools(options.pools)).map((p) => [p.name, p]));
  return {
    hostname: options.hostName,
    agentAddress: options.agentAddress,
    cores: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    driver:
      caps.driver === 'fake'
        ? controlv1.HypervisorDriver.HYPERVISOR_DRIVER_FAKE
        : controlv1.HypervisorDriver.HYPERVISOR_DRIVER_QEMU,
    accelerator: ACCELERATOR[caps.accelerator],
    acceleratorReason: caps.acceleratorReason,
    qemuVersion: caps.qemuVersion,
    machineTypes: caps.machineTypes,
    defaultMachineType: caps.defaultMachineType,
    cpuModels: caps.cpuModels,
    defaultCpuModel: caps.defaultCpuModel,
    pools: Object.entries(options.pools).map(([name, pool]) => ({
      name,
      path: pool.path,
      shared: pool.shared,
      totalBytes: usage.get(name)?.totalBytes ?? 0,
      freeBytes: usage.get(name)?.freeBytes ?? 0,
    })),
    features: { ...caps.features },
    labels: options.labels ?? {},
    agentVersion: AGENT_VERSION,
  };
}
