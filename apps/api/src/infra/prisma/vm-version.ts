import type { Prisma, Vm } from '../../gen/prisma/client.js';

/** The VM does not exist, or was deleted. */
export class VmNotFoundError extends Error {
  override readonly name = 'VmNotFoundError';
  readonly code = 'VM_NOT_FOUND';
  constructor(readonly vmId: string) {
    super(`VM ${vmId} not found`);
  }
}

/** The VM changed since the client read it: its version (ETag) is no longer the one expected. */
export class VersionConflictError extends Error {
  override readonly name = 'VersionConflictError';
  readonly code = 'ETAG_MISMATCH';
  constructor(
    readonly vmId: string,
    readonly expectedVersion: number,
    readonly currentVersion: number,
  ) {
    super(`VM ${vmId} is at version ${currentVersion}, not ${expectedVersion}`);
  }
}

/** Columns a VM update may set; `version` and `updated_at` belong to the database trigger. */
export type VmChanges = Omit<Prisma.VmUncheckedUpdateManyInput, 'id' | 'version' | 'updatedAt' | 'createdAt'>;

/**
 * Updates a live VM, optionally only if it is still at `expectedVersion` (If-Match), and returns
 * the new row. The compare and the write are one UPDATE, so two writers with the same version
 * cannot both succeed. The trigger `vms_bump_version` bumps `version` when anything changed.
 *
 * @throws VmNotFoundError when the VM does not exist or is deleted
 * @throws VersionConflictError when `expectedVersion` is stale
 */
export async function updateVm(
  db: Prisma.TransactionClient,
  id: string,
  expectedVersion: number | undefined,
  changes: VmChanges,
): Promise<Vm> {
  const updated = await db.vm.updateManyAndReturn({
    where: { id, deletedAt: null, ...(expectedVersion === undefined ? {} : { version: expectedVersion }) },
    data: changes,
  });
  const row = updated[0];
  if (row) return row;
  const current = await db.vm.findUnique({ where: { id }, select: { version: true, deletedAt: true } });
  if (!current || current.deletedAt !== null) throw new VmNotFoundError(id);
  throw new VersionConflictError(id, expectedVersion ?? current.version, current.version);
}
