import { z } from 'zod';
import { VmmError } from '../errors.js';

/** VM ids are lowercase UUIDs or short slugs: they become folder names, so nothing else is allowed. */
export const VM_ID_PATTERN = /^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$/;
/** Device, disk, NIC and pool names: used as QEMU ids and file names. */
export const NAME_PATTERN = /^[A-Za-z][A-Za-z0-9_-]{0,31}$/;
export const MAC_PATTERN = /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/;
/** Linux interface names: at most 15 bytes. */
export const IFNAME_PATTERN = /^[A-Za-z0-9_.-]{1,15}$/;

const relativePath = z
  .string()
  .min(1)
  .max(255)
  .refine((p) => !p.startsWith('/'), 'must be relative to its pool')
  .refine((p) => !p.split('/').includes('..'), 'must not contain ".."')
  .refine((p) => !/[\0\n\r,]/.test(p), 'must not contain NUL, newlines or commas');

/** A file inside a named storage pool; the driver resolves it and refuses anything outside the pool. */
export const PoolPathSchema = z.strictObject({
  pool: z.string().regex(NAME_PATTERN, 'pool names are letters, digits, "_" and "-"'),
  path: relativePath,
});
export type PoolPath = z.infer<typeof PoolPathSchema>;

export const DiskCacheModeSchema = z.enum(['none', 'writeback', 'writethrough', 'directsync', 'unsafe']);
export type DiskCacheMode = z.infer<typeof DiskCacheModeSchema>;

export const DiskSpecSchema = z.strictObject({
  name: z.string().regex(NAME_PATTERN),
  file: PoolPathSchema,
  format: z.enum(['qcow2', 'raw']).default('qcow2'),
  /** When set and the file does not exist, vmm-core creates `file` as a qcow2 overlay over it. */
  backing: PoolPathSchema.extend({ format: z.enum(['qcow2', 'raw']).default('qcow2') }).optional(),
  sizeBytes: z
    .number()
    .int()
    .positive()
    .max(2 ** 50)
    .optional(),
  cache: DiskCacheModeSchema.default('none'),
  readOnly: z.boolean().default(false),
  bootIndex: z.number().int().min(0).max(31).optional(),
});
export type DiskSpec = z.infer<typeof DiskSpecSchema>;
export type DiskSpecInput = z.input<typeof DiskSpecSchema>;

export const NicSpecSchema = z.strictObject({
  name: z.string().regex(NAME_PATTERN),
  mac: z.string().toLowerCase().regex(MAC_PATTERN, 'a MAC address like 52:54:00:12:34:56'),
  /**
   * `tap`: an existing tap device (the agent creates it on its bridge);
   * `user`: QEMU's user-mode network with restrict=on (no traffic leaves the guest), for tests.
   */
  backend: z.discriminatedUnion('type', [
    z.strictObject({ type: z.literal('tap'), ifname: z.string().regex(IFNAME_PATTERN) }),
    z.strictObject({ type: z.literal('user') }),
  ]),
  model: z.enum(['virtio-net-pci', 'e1000']).default('virtio-net-pci'),
});
export type NicSpec = z.infer<typeof NicSpecSchema>;
export type NicSpecInput = z.input<typeof NicSpecSchema>;

const HOSTNAME_PATTERN =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

export const CloudInitSpecSchema = z.strictObject({
  hostname: z.string().regex(HOSTNAME_PATTERN, 'an RFC 1123 host name'),
  instanceId: z
    .string()
    .regex(/^[A-Za-z0-9._-]{1,128}$/)
    .optional(),
  userData: z
    .string()
    .max(1024 * 1024)
    .optional(),
  networkConfig: z
    .string()
    .max(64 * 1024)
    .optional(),
});
export type CloudInitSpec = z.infer<typeof CloudInitSpecSchema>;

export const BootSpecSchema = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('kernel'),
    kernel: PoolPathSchema,
    initrd: PoolPathSchema.optional(),
    cmdline: z
      .string()
      .max(4096)
      .refine((s) => !/[\0\n]/.test(s), 'no NUL or newline')
      .default('console=ttyS0'),
  }),
  z.strictObject({ type: z.literal('disk') }),
]);
export type BootSpec = z.infer<typeof BootSpecSchema>;

export const VmSpecSchema = z
  .strictObject({
    id: z.string().regex(VM_ID_PATTERN, 'lowercase letters, digits and "-", at most 64'),
    name: z
      .string()
      .min(1)
      .max(63)
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_" and "-"'),
    vcpus: z.number().int().min(1).max(64),
    memoryMiB: z
      .number()
      .int()
      .min(32)
      .max(1024 * 1024),
    machineType: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]{0,63}$/)
      .default('pc'),
    /** A named model: `host` is refused because a VM pinned to the host CPU cannot migrate. */
    cpuModel: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/)
      .refine((m) => m !== 'host' && m !== 'max', 'use a named CPU model (host/max cannot migrate)')
      .default('qemu64'),
    boot: BootSpecSchema,
    disks: z.array(DiskSpecSchema).max(16).default([]),
    nics: z.array(NicSpecSchema).max(8).default([]),
    cloudInit: CloudInitSpecSchema.optional(),
    /** Extra serial port with a root shell on the test guest; off for real workloads. */
    debugShell: z.boolean().default(false),
  })
  .superRefine((spec, ctx) => {
    const names = new Set<string>();
    for (const [i, d] of [...spec.disks, ...spec.nics].entries()) {
      if (names.has(d.name) || d.name === 'seed') {
        ctx.addIssue({
          code: 'custom',
          message: `device name "${d.name}" is used twice or reserved`,
          path: ['devices', i],
        });
      }
      names.add(d.name);
    }
    const macs = new Set(spec.nics.map((n) => n.mac));
    if (macs.size !== spec.nics.length)
      ctx.addIssue({ code: 'custom', message: 'two NICs share a MAC', path: ['nics'] });
    if (spec.boot.type === 'disk' && spec.disks.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'disk boot needs at least one disk', path: ['boot'] });
    }
  });
export type VmSpec = z.infer<typeof VmSpecSchema>;
export type VmSpecInput = z.input<typeof VmSpecSchema>;

/** Validates a spec, turning zod issues into one INVALID_SPEC error that names each bad field. */
export function parseVmSpec(input: unknown): VmSpec {
  const result = VmSpecSchema.safeParse(input);
  if (!result.success) {
    const issues = result.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
    throw new VmmError(
      'INVALID_SPEC',
      `invalid VM spec: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`,
      { details: { issues } },
    );
  }
  return result.data;
}

/** Parses one disk spec for hot-plug. */
export function parseDiskSpec(input: unknown): DiskSpec {
  const result = DiskSpecSchema.safeParse(input);
  if (!result.success) {
    throw new VmmError(
      'INVALID_SPEC',
      `invalid disk: ${result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  }
  return result.data;
}

/** Parses one NIC spec for hot-plug. */
export function parseNicSpec(input: unknown): NicSpec {
  const result = NicSpecSchema.safeParse(input);
  if (!result.success) {
    throw new VmmError(
      'INVALID_SPEC',
      `invalid NIC: ${result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  }
  return result.data;
}

/** A locally administered, stable MAC derived from a VM id and NIC index (52:54:00 is QEMU's OUI). */
export function macFromVmId(vmId: string, index: number): string {
  let h = 2166136261;
  for (const c of `${vmId}#${index}`) {
    h ^= c.charCodeAt(0);
    h = Math.imul(h, 16777619) >>> 0;
  }
  const b = [(h >>> 16) & 0xff, (h >>> 8) & 0xff, h & 0xff];
  return ['52', '54', '00', ...b.map((x) => x.toString(16).padStart(2, '0'))].join(':');
}
