import { readFile } from 'node:fs/promises';

/** True when `pid` exists and is not a zombie (a daemonized QEMU is not our child, so no waitpid). */
export async function isProcessAlive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** The argv of a process, or undefined when it is gone. */
export async function processArgv(pid: number): Promise<string[] | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').filter((a) => a.length > 0);
  } catch {
    return undefined;
  }
}

/**
 * Whether `pid` is the QEMU that writes `pidfile`: guards against pid reuse before we signal
 * anything or re-adopt it.
 */
export async function isQemuWithPidfile(pid: number, pidfile: string): Promise<boolean> {
  const argv = await processArgv(pid);
  if (!argv || !(await isProcessAlive(pid))) return false;
  const i = argv.indexOf('-pidfile');
  return i >= 0 && argv[i + 1] === pidfile && (argv[0] ?? '').includes('qemu');
}

/** Polls until the process is gone or the timeout passes; returns whether it exited. */
export async function waitForExit(pid: number, timeoutMs: number, intervalMs = 25): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!(await isProcessAlive(pid))) return true;
    if (Date.now() >= deadline) return false;
    await sleep(intervalMs);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function readPidfile(file: string): Promise<number | undefined> {
  try {
    const pid = Number.parseInt((await readFile(file, 'utf8')).trim(), 10);
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}
