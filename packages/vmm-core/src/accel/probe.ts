import { open, readFile } from 'node:fs/promises';
import { isVmmError, VmmError } from '../errors.js';
import { runCommand } from '../util/exec.js';

/** An accelerator QEMU can run guests with. */
export type HardwareAccelerator = 'kvm' | 'tcg';

/** Configured choice: `auto` probes; `kvm`/`tcg` force one. */
export type AcceleratorChoice = 'auto' | HardwareAccelerator;

/** Options of {@link probeAccelerator}. */
export interface ProbeAcceleratorOptions {
  override?: AcceleratorChoice;
  devKvmPath?: string;
  cpuinfoPath?: string;
}

/** The accelerator to use and why, for logs and the host's capability report. */
export interface AcceleratorProbe {
  accelerator: HardwareAccelerator;
  reason: string;
}

/** What a QEMU binary offers. */
export interface QemuInfo {
  binary: string;
  version: { major: number; minor: number; micro: number };
  /** `major.minor.micro`, e.g. `7.2.22`. */
  versionString: string;
  /** The distribution's package version, e.g. `Debian 1:7.2+dfsg-7+deb12u18`, when printed. */
  packageVersion: string | undefined;
  /** Every machine type name, aliases (`pc`, `q35`) included. */
  machineTypes: string[];
  /** Alias → the versioned machine type it stands for, e.g. `pc` → `pc-i440fx-7.2`. */
  machineAliases: Record<string, string>;
  /** The machine type QEMU uses without `-machine`, e.g. `pc-i440fx-7.2`. */
  defaultMachine: string;
  /** CPU model names (`-cpu help`), e.g. `qemu64`, `Nehalem`, `EPYC-v3`. */
  cpuModels: string[];
  /** Accelerators compiled into the binary (`-accel help`), e.g. `tcg`, `kvm`. */
  accelerators: string[];
}

const PROBE_TIMEOUT_MS = 20_000;
const qemuInfoCache = new Map<string, Promise<QemuInfo>>();

/**
 * Chooses between KVM and TCG. KVM is chosen only when `/dev/kvm` opens read-write AND the CPU
 * flags show `vmx` or `svm`: nested KVM without hardware support exists but runs guests about
 * 100x slower than TCG. An override wins over the probe.
 *
 * @throws VmmError `UNSUPPORTED` when `kvm` is forced but `/dev/kvm` cannot be opened read-write;
 *   `INVALID_SPEC` for an unknown override.
 */
export async function probeAccelerator(options: ProbeAcceleratorOptions = {}): Promise<AcceleratorProbe> {
  const override = options.override ?? 'auto';
  const devKvmPath = options.devKvmPath ?? '/dev/kvm';
  const cpuinfoPath = options.cpuinfoPath ?? '/proc/cpuinfo';
  if (override !== 'auto' && override !== 'kvm' && override !== 'tcg') {
    throw new VmmError('INVALID_SPEC', `unknown accelerator '${String(override)}' (auto, kvm or tcg)`, {
      details: { override },
    });
  }
  if (override === 'tcg') {
    return { accelerator: 'tcg', reason: 'tcg forced by configuration (accel: tcg)' };
  }

  const kvmProblem = await devKvmProblem(devKvmPath);
  if (override === 'kvm') {
    if (kvmProblem !== undefined) {
      throw new VmmError('UNSUPPORTED', `accel: kvm was configured but ${kvmProblem}`, {
        details: { devKvmPath },
      });
    }
    const cpu = await virtualisationFlag(cpuinfoPath);
    const warning = 'missing' in cpu ? `; warning: ${cpu.missing}, guests may run very slowly` : '';
    return { accelerator: 'kvm', reason: `kvm forced by configuration (accel: kvm)${warning}` };
  }

  if (kvmProblem !== undefined) {
    return { accelerator: 'tcg', reason: `${kvmProblem}; using tcg` };
  }
  const cpu = await virtualisationFlag(cpuinfoPath);
  if ('missing' in cpu) {
    return {
      accelerator: 'tcg',
      reason:
        `${devKvmPath} opens but ${cpu.missing} (nested virtualisation without hardware support ` +
        'is slower than emulation); using tcg',
    };
  }
  return { accelerator: 'kvm', reason: `${devKvmPath} opens read-write and the CPU has ${cpu.flag}` };
}

/**
 * Asks a QEMU binary for its version, machine types, CPU models and accelerators. The answer is
 * cached per binary for the life of the process (a failed probe is not cached).
 *
 * @throws VmmError `QEMU_FAILED` when the binary is missing or its output cannot be understood.
 */
export function probeQemu(binary = 'qemu-system-x86_64'): Promise<QemuInfo> {
  let cached = qemuInfoCache.get(binary);
  if (cached === undefined) {
    cached = probeQemuUncached(binary);
    qemuInfoCache.set(binary, cached);
    cached.catch(() => qemuInfoCache.delete(binary));
  }
  return cached;
}

/**
 * The versioned machine type a name stands for (`pc` → `pc-i440fx-7.2`), the name itself when it
 * is already a concrete machine type, or `undefined` when the binary does not know it.
 */
export function resolveMachineType(info: QemuInfo, name: string): string | undefined {
  const alias = info.machineAliases[name];
  if (alias !== undefined) return alias;
  return info.machineTypes.includes(name) ? name : undefined;
}

/**
 * The CPU model a new VM gets when its spec names none. Never `host` or `max`: a VM must be able
 * to migrate to any host of the cluster. Under TCG `qemu64` is the cheapest to emulate; under KVM
 * `Nehalem` (SSE4.2, POPCNT) runs on every x86-64 server CPU of the last decade, Intel or AMD.
 * Clusters of newer hardware set a newer model (e.g. `Skylake-Server`, `EPYC`) per VM.
 */
export function defaultCpuModel(accelerator: HardwareAccelerator): string {
  return accelerator === 'kvm' ? 'Nehalem' : 'qemu64';
}

async function probeQemuUncached(binary: string): Promise<QemuInfo> {
  const [versionOut, machineOut, cpuOut, accelOut] = await Promise.all([
    qemuOutput(binary, ['--version']),
    qemuOutput(binary, ['-machine', 'help']),
    qemuOutput(binary, ['-cpu', 'help']),
    qemuOutput(binary, ['-accel', 'help']),
  ]);

  const version = /version (\d+)\.(\d+)\.(\d+)(?:\s*\(([^)]*)\))?/.exec(versionOut);
  if (version === null) throw unexpected(binary, '--version', versionOut);
  const machines = parseMachineHelp(machineOut);
  if (machines.defaultMachine === undefined) throw unexpected(binary, '-machine help', machineOut);

  return {
    binary,
    version: { major: Number(version[1]), minor: Number(version[2]), micro: Number(version[3]) },
    versionString: `${version[1]}.${version[2]}.${version[3]}`,
    packageVersion: version[4],
    machineTypes: machines.machineTypes,
    machineAliases: machines.machineAliases,
    defaultMachine: machines.defaultMachine,
    cpuModels: parseCpuHelp(cpuOut),
    accelerators: accelOut
      .split('\n')
      .slice(1)
      .map((l) => l.trim())
      .filter((l) => /^[a-z0-9_-]+$/.test(l)),
  };
}

/** Parses `-machine help`: `name   description [(alias of X)] [(default)]` after a header line. */
function parseMachineHelp(text: string): {
  machineTypes: string[];
  machineAliases: Record<string, string>;
  defaultMachine: string | undefined;
} {
  const machineTypes: string[] = [];
  const machineAliases: Record<string, string> = {};
  let defaultMachine: string | undefined;
  for (const line of text.split('\n').slice(1)) {
    const match = /^(\S+)\s+(.*)$/.exec(line);
    if (match?.[1] === undefined) continue;
    const name = match[1];
    const description = match[2] ?? '';
    machineTypes.push(name);
    const alias = /\(alias of ([^)\s]+)\)/.exec(description)?.[1];
    if (alias !== undefined) machineAliases[name] = alias;
    if (description.includes('(default)')) defaultMachine = alias ?? name;
  }
  return { machineTypes, machineAliases, defaultMachine };
}

/** Parses the model list of `-cpu help` (x86 prints `x86 <name>  <description>`), up to the flags. */
function parseCpuHelp(text: string): string[] {
  const models: string[] = [];
  for (const line of text.split('\n').slice(1)) {
    if (line.trim() === '') break;
    const name = /^(?:x86\s+)?(\S+)/.exec(line)?.[1];
    if (name !== undefined) models.push(name);
  }
  return models;
}

async function qemuOutput(binary: string, args: string[]): Promise<string> {
  try {
    return (await runCommand(binary, args, { timeoutMs: PROBE_TIMEOUT_MS, env: { LC_ALL: 'C' } })).stdout;
  } catch (err) {
    if (isVmmError(err)) {
      throw new VmmError('QEMU_FAILED', `cannot probe ${binary}: ${err.message}`, {
        cause: err,
        details: { binary, args },
      });
    }
    throw err;
  }
}

function unexpected(binary: string, command: string, output: string): VmmError {
  return new VmmError('QEMU_FAILED', `cannot understand the output of ${binary} ${command}`, {
    details: { binary, output: output.slice(0, 500) },
  });
}

/** Why `/dev/kvm` cannot be used, or undefined when it opens read-write. */
async function devKvmProblem(devKvmPath: string): Promise<string | undefined> {
  try {
    const handle = await open(devKvmPath, 'r+');
    await handle.close();
    return undefined;
  } catch (err) {
    const code = err instanceof Error && 'code' in err ? String(err.code) : 'error';
    const why =
      code === 'ENOENT'
        ? 'does not exist (no KVM module loaded?)'
        : code === 'EACCES' || code === 'EPERM'
          ? 'is not writable by this user'
          : `cannot be opened (${code})`;
    return `${devKvmPath} ${why}; it must open read-write`;
  }
}

/** `vmx` or `svm` when a `flags` line of cpuinfo holds one; otherwise why not, for the reason text. */
async function virtualisationFlag(
  cpuinfoPath: string,
): Promise<{ flag: 'vmx' | 'svm' } | { missing: string }> {
  let text: string;
  try {
    text = await readFile(cpuinfoPath, 'utf8');
  } catch (err) {
    const code = err instanceof Error && 'code' in err ? String(err.code) : 'error';
    return { missing: `${cpuinfoPath} cannot be read (${code}), so vmx/svm cannot be confirmed` };
  }
  for (const line of text.split('\n')) {
    const match = /^flags\s*:(.*)$/.exec(line);
    if (match?.[1] === undefined) continue;
    const flags = new Set(match[1].trim().split(/\s+/));
    if (flags.has('vmx')) return { flag: 'vmx' };
    if (flags.has('svm')) return { flag: 'svm' };
  }
  return { missing: `${cpuinfoPath} shows neither vmx nor svm` };
}
