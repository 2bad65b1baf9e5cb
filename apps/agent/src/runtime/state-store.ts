import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { VmState } from '@hangar/vmm-core';

/** How many operation outcomes are kept per VM; older ones are forgotten first. */
export const DEFAULT_OPERATION_HISTORY = 64;

/** The bucket for operations that belong to no VM (storage tokens); cannot clash with a VM id. */
export const HOST_BUCKET = '_host';

/** The recorded outcome of one mutating call. */
export type OperationOutcome =
  | { ok: true; result: unknown }
  | { ok: false; error: { kind: 'vmm' | 'agent' | 'internal'; code: string; message: string } };

export interface OperationRecord {
  operationId: string;
  /** The RPC (`createVm`, `startVm`, ...): one api operation may send several RPCs to one VM. */
  method: string;
  /** sha256 of the canonical request, so a reuse with another request is caught. */
  fingerprint: string;
  at: string;
  outcome: OperationOutcome;
}

/** What the agent keeps per VM on the host, one JSON file each. */
export interface VmRecord {
  version: 1;
  vmId: string;
  /** What the control plane last asked this guest to be; undefined before any wish. */
  desiredState: VmState | undefined;
  desiredSince: string | undefined;
  /** Taps the agent created for this VM, by NIC name, so hot-plugged NICs get unused indices. */
  taps: Record<string, { index: number; ifname: string }>;
  /** Newest last, at most `history` entries. */
  operations: OperationRecord[];
}

/**
 * Desired state and operation outcomes per VM under `stateDir/vms/<id>.json`. Each change
 * rewrites the VM's file through a temp file + fsync + rename, so a crash leaves either the old
 * or the new record, never half of one. Reads come from memory after {@link load}.
 */
export class VmStateStore {
  private readonly records = new Map<string, VmRecord>();
  private readonly dir: string;

  constructor(
    stateDir: string,
    private readonly history = DEFAULT_OPERATION_HISTORY,
  ) {
    this.dir = path.join(stateDir, 'vms');
  }

  /** Reads every record; unreadable files are moved aside (reported, never fatal). */
  async load(): Promise<{ loaded: number; corrupt: string[] }> {
    await mkdir(this.dir, { recursive: true, mode: 0o750 });
    this.records.clear();
    const corrupt: string[] = [];
    for (const entry of (await readdir(this.dir)).sort()) {
      if (!entry.endsWith('.json')) continue;
      const file = path.join(this.dir, entry);
      try {
        const parsed = JSON.parse(await readFile(file, 'utf8')) as VmRecord;
        if (parsed.version !== 1 || typeof parsed.vmId !== 'string' || `${parsed.vmId}.json` !== entry) {
          throw new Error('not a version-1 record of this VM');
        }
        this.records.set(parsed.vmId, {
          ...parsed,
          taps: parsed.taps ?? {},
          operations: Array.isArray(parsed.operations) ? parsed.operations : [],
        });
      } catch {
        const aside = `${file}.corrupt-${Date.now()}`;
        await rename(file, aside).catch(() => undefined);
        corrupt.push(aside);
      }
    }
    return { loaded: this.records.size, corrupt };
  }

  ids(): string[] {
    return [...this.records.keys()].filter((id) => id !== HOST_BUCKET).sort();
  }

  get(vmId: string): VmRecord | undefined {
    return this.records.get(vmId);
  }

  findOperation(vmId: string, method: string, operationId: string): OperationRecord | undefined {
    return this.records
      .get(vmId)
      ?.operations.find((o) => o.operationId === operationId && o.method === method);
  }

  /** Applies `change` to a copy of the VM's record and persists it before memory is updated. */
  async update(vmId: string, change: (record: VmRecord) => void): Promise<VmRecord> {
    const current = this.records.get(vmId);
    const next: VmRecord = current
      ? structuredClone(current)
      : { version: 1, vmId, desiredState: undefined, desiredSince: undefined, taps: {}, operations: [] };
    change(next);
    if (next.operations.length > this.history) {
      next.operations = next.operations.slice(next.operations.length - this.history);
    }
    await this.write(next);
    this.records.set(vmId, next);
    return next;
  }

  /** Forgets a VM: its desired state and every recorded operation. */
  async remove(vmId: string): Promise<void> {
    await rm(this.fileOf(vmId), { force: true });
    this.records.delete(vmId);
  }

  private fileOf(vmId: string): string {
    return path.join(this.dir, `${vmId}.json`);
  }

  private async write(record: VmRecord): Promise<void> {
    const file = this.fileOf(record.vmId);
    const tmp = `${file}.${process.pid}.tmp`;
    const handle = await open(tmp, 'w', 0o640);
    try {
      await handle.writeFile(`${JSON.stringify(record)}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, file);
  }
}

/** Canonical JSON (keys sorted, undefined dropped) hashed: equal requests give equal fingerprints. */
export function fingerprint(method: string, args: unknown): string {
  return createHash('sha256').update(canonicalJson({ method, args })).digest('hex');
}

function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (value instanceof Date) return JSON.stringify(value.toISOString());
  if (Array.isArray(value))
    return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}
