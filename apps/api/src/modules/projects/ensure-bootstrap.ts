import { Prisma } from '../../gen/prisma/client.js';
import type { PrismaService } from '../../infra/prisma/prisma.service.js';
import { generateApiKey } from '../auth/api-key-secret.js';

/** A flavor the set-up creates when missing. */
export interface FlavorSeed {
  readonly name: string;
  readonly vcpus: number;
  readonly memoryMib: number;
  readonly diskGib: number;
  readonly description: string;
}

/** An image the set-up registers when missing (paths relative to the pool). */
export interface ImageSeed {
  readonly name: string;
  readonly pool: string;
  readonly kernelPath?: string | undefined;
  readonly initrdPath?: string | undefined;
  readonly cmdline?: string | undefined;
  readonly diskPath?: string | undefined;
  readonly format?: 'qcow2' | 'raw' | undefined;
}

/** Flavors of a fresh cluster: small enough for TCG guests on a laptop. */
export const DEFAULT_FLAVORS: readonly FlavorSeed[] = [
  { name: 'tiny', vcpus: 1, memoryMib: 256, diskGib: 1, description: '1 vCPU, 256 MiB, 1 GiB' },
  { name: 'small', vcpus: 1, memoryMib: 1024, diskGib: 10, description: '1 vCPU, 1 GiB, 10 GiB' },
  { name: 'medium', vcpus: 2, memoryMib: 2048, diskGib: 20, description: '2 vCPUs, 2 GiB, 20 GiB' },
];

/** Options of {@link ensureBootstrap}. */
export interface BootstrapOptions {
  /** The default project's name (default `default`). */
  readonly projectName?: string;
  readonly flavors?: readonly FlavorSeed[];
  readonly images?: readonly ImageSeed[];
  /** Issue a new admin key even when the project has one (existing keys stay valid). */
  readonly newAdminKey?: boolean;
}

/** What {@link ensureBootstrap} found or made. */
export interface BootstrapResult {
  readonly projectId: string;
  readonly projectCreated: boolean;
  /** The new admin key, shown this once; undefined when an active admin key already existed. */
  readonly adminKey: { readonly id: string; readonly prefix: string; readonly token?: string | undefined };
  readonly flavorsCreated: readonly string[];
  readonly imagesCreated: readonly string[];
}

/** Serialises concurrent set-ups (two replicas starting, a script run twice). */
const BOOTSTRAP_LOCK_KEY = 72707370;

/**
 * Makes a fresh cluster usable, idempotently: the default project, an admin API key (stored as a
 * hash; its secret is returned only when this call created it), the default flavors and the given
 * images. Existing rows are left as they are (an operator may have changed them). One transaction
 * under an advisory lock, so concurrent runs create each thing once.
 */
export async function ensureBootstrap(
  prisma: PrismaService,
  options: BootstrapOptions = {},
): Promise<BootstrapResult> {
  const projectName = options.projectName ?? 'default';
  return prisma.$transaction(async (tx) => {
    await tx.$executeRaw(Prisma.sql`SELECT pg_advisory_xact_lock(${BOOTSTRAP_LOCK_KEY})`);
    const existing = await tx.project.findUnique({ where: { name: projectName } });
    const project =
      existing ??
      (await tx.project.create({ data: { name: projectName, description: 'Created by the Hangar set-up' } }));

    const activeAdmin = options.newAdminKey
      ? null
      : await tx.apiKey.findFirst({
          where: { projectId: project.id, role: 'admin', revokedAt: null },
          orderBy: { createdAt: 'asc' },
        });
    let adminKey: BootstrapResult['adminKey'];
    if (activeAdmin) {
      adminKey = { id: activeAdmin.id, prefix: activeAdmin.prefix };
    } else {
      const key = generateApiKey();
      const row = await tx.apiKey.create({
        data: {
          projectId: project.id,
          role: 'admin',
          name: 'bootstrap-admin',
          prefix: key.prefix,
          secretHash: key.secretHash,
        },
      });
      adminKey = { id: row.id, prefix: row.prefix, token: key.token };
    }

    const flavorsCreated: string[] = [];
    for (const flavor of options.flavors ?? DEFAULT_FLAVORS) {
      const { count } = await tx.flavor.createMany({ data: [flavor], skipDuplicates: true });
      if (count > 0) flavorsCreated.push(flavor.name);
    }
    const imagesCreated: string[] = [];
    for (const image of options.images ?? []) {
      const { count } = await tx.image.createMany({
        data: [
          {
            name: image.name,
            pool: image.pool,
            kernelPath: image.kernelPath ?? null,
            initrdPath: image.initrdPath ?? null,
            cmdline: image.cmdline ?? null,
            diskPath: image.diskPath ?? null,
            format: image.format ?? 'qcow2',
          },
        ],
        skipDuplicates: true,
      });
      if (count > 0) imagesCreated.push(image.name);
    }
    return { projectId: project.id, projectCreated: !existing, adminKey, flavorsCreated, imagesCreated };
  });
}
