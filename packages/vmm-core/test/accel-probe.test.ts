import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  type AcceleratorChoice,
  defaultCpuModel,
  probeAccelerator,
  probeQemu,
  resolveMachineType,
} from '../src/accel/index.js';
import { VmmError } from '../src/errors.js';

let dir: string;
let devKvmPath: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hangar-test-'));
  // Any file that opens read-write stands in for a usable /dev/kvm.
  devKvmPath = join(dir, 'kvm');
  await writeFile(devKvmPath, '');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function failure(promise: Promise<unknown>): Promise<VmmError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof VmmError) return err;
    throw err;
  }
  throw new Error('expected a VmmError');
}

async function cpuinfo(flags: string): Promise<string> {
  const path = join(dir, `cpuinfo-${Math.random().toString(36).slice(2)}`);
  const cpu = (n: number) =>
    `processor\t: ${n}\nvendor_id\t: AuthenticAMD\nmodel name\t: Test CPU\nflags\t\t: ${flags}\nbugs\t\t: sysret_ss_attrs\n\n`;
  await writeFile(path, cpu(0) + cpu(1));
  return path;
}

const BASE_FLAGS =
  'fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat sse sse2 ht syscall nx lm';

describe('probeAccelerator', () => {
  it('chooses kvm when /dev/kvm opens read-write and the CPU has vmx or svm', async () => {
    for (const flag of ['vmx', 'svm']) {
      const result = await probeAccelerator({
        devKvmPath,
        cpuinfoPath: await cpuinfo(`${BASE_FLAGS} ${flag} npt`),
      });
      expect(result.accelerator).toBe('kvm');
      expect(result.reason).toContain(flag);
    }
  });

  it('chooses tcg when the CPU flags lack vmx and svm, naming why', async () => {
    // svm_lock and vmx-like names are not the flags themselves
    const cpuinfoPath = await cpuinfo(`${BASE_FLAGS} svm_lock vmxx hypervisor`);
    const result = await probeAccelerator({ devKvmPath, cpuinfoPath });
    expect(result.accelerator).toBe('tcg');
    expect(result.reason).toContain('neither vmx nor svm');
  });

  it('chooses tcg when /dev/kvm is missing or cannot be opened, naming the device', async () => {
    const cpuinfoPath = await cpuinfo(`${BASE_FLAGS} vmx`);
    const missing = join(dir, 'no-kvm');
    const result = await probeAccelerator({ devKvmPath: missing, cpuinfoPath });
    expect(result.accelerator).toBe('tcg');
    expect(result.reason).toContain(missing);
    expect(result.reason).toContain('does not exist');

    const notADevice = join(dir, 'kvm-dir');
    await mkdir(notADevice);
    const dirResult = await probeAccelerator({ devKvmPath: notADevice, cpuinfoPath });
    expect(dirResult.accelerator).toBe('tcg');
    expect(dirResult.reason).toContain('EISDIR');
  });

  it('chooses tcg when cpuinfo cannot be read', async () => {
    const result = await probeAccelerator({ devKvmPath, cpuinfoPath: join(dir, 'no-cpuinfo') });
    expect(result.accelerator).toBe('tcg');
    expect(result.reason).toContain('cannot be read');
  });

  it('lets an override win', async () => {
    const withVmx = await cpuinfo(`${BASE_FLAGS} vmx`);
    const withoutVmx = await cpuinfo(BASE_FLAGS);
    const tcg = await probeAccelerator({ override: 'tcg', devKvmPath, cpuinfoPath: withVmx });
    expect(tcg.accelerator).toBe('tcg');
    expect(tcg.reason).toContain('forced');

    const kvm = await probeAccelerator({ override: 'kvm', devKvmPath, cpuinfoPath: withoutVmx });
    expect(kvm.accelerator).toBe('kvm');
    expect(kvm.reason).toContain('forced');
    expect(kvm.reason).toContain('warning');

    const auto = await probeAccelerator({ override: 'auto', devKvmPath, cpuinfoPath: withoutVmx });
    expect(auto.accelerator).toBe('tcg');
  });

  it('refuses a kvm override when /dev/kvm is unusable', async () => {
    const missing = join(dir, 'no-kvm');
    const err = await failure(
      probeAccelerator({
        override: 'kvm',
        devKvmPath: missing,
        cpuinfoPath: await cpuinfo(`${BASE_FLAGS} vmx`),
      }),
    );
    expect(err.code).toBe('UNSUPPORTED');
    expect(err.message).toContain(missing);
    expect(err.message).toContain('kvm');
  });

  it('refuses an unknown override', async () => {
    const err = await failure(probeAccelerator({ override: 'hvf' as AcceleratorChoice, devKvmPath }));
    expect(err.code).toBe('INVALID_SPEC');
  });

  it('agrees with the real host', async () => {
    const result = await probeAccelerator();
    expect(result.reason.length).toBeGreaterThan(10);
    const flagLines = (await readFile('/proc/cpuinfo', 'utf8'))
      .split('\n')
      .filter((l) => l.startsWith('flags'));
    const hasVirt = flagLines.some((l) => /\s(vmx|svm)(\s|$)/.test(l));
    if (!hasVirt) expect(result.accelerator).toBe('tcg');
    else expect(['kvm', 'tcg']).toContain(result.accelerator);
  });
});

describe('probeQemu', () => {
  it('finds QEMU 7.2, its machine types with aliases resolved, and CPU models', async () => {
    const info = await probeQemu();
    expect(info.binary).toBe('qemu-system-x86_64');
    expect(info.version).toMatchObject({ major: 7, minor: 2 });
    expect(info.versionString).toMatch(/^7\.2\.\d+$/);

    expect(info.machineTypes).toContain('pc');
    expect(info.machineTypes).toContain('pc-i440fx-7.2');
    expect(info.machineAliases.pc).toBe('pc-i440fx-7.2');
    expect(resolveMachineType(info, 'pc')).toBe('pc-i440fx-7.2');
    expect(resolveMachineType(info, 'q35')).toBe('pc-q35-7.2');
    expect(resolveMachineType(info, 'pc-q35-7.1')).toBe('pc-q35-7.1');
    expect(resolveMachineType(info, 'no-such-machine')).toBeUndefined();
    expect(info.defaultMachine).toBe('pc-i440fx-7.2');

    expect(info.cpuModels).toContain('qemu64');
    expect(info.cpuModels).toContain('EPYC');
    expect(info.cpuModels).not.toContain('x86');
    expect(info.cpuModels.every((m) => /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(m))).toBe(true);
    // the flag list that follows the models is not mistaken for models
    expect(info.cpuModels).not.toContain('avx2');
    expect(info.accelerators).toContain('tcg');
  });

  it('caches per binary', async () => {
    expect(probeQemu()).toBe(probeQemu());
    expect(await probeQemu('qemu-system-x86_64')).toBe(await probeQemu());
  });

  it('fails with QEMU_FAILED for a missing binary, and does not cache the failure', async () => {
    const binary = join(dir, 'qemu-system-none');
    const first = probeQemu(binary);
    const err = await failure(first);
    expect(err.code).toBe('QEMU_FAILED');
    expect(err.message).toContain(binary);
    const second = probeQemu(binary);
    expect(second).not.toBe(first);
    await expect(second).rejects.toThrow(VmmError);
  });
});

describe('defaultCpuModel', () => {
  it('is qemu64 under tcg and a named model QEMU knows under kvm, never host or max', async () => {
    expect(defaultCpuModel('tcg')).toBe('qemu64');
    const kvmModel = defaultCpuModel('kvm');
    expect(['host', 'max']).not.toContain(kvmModel);
    expect((await probeQemu()).cpuModels).toContain(kvmModel);
  });
});
