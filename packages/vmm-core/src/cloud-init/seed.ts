import { randomBytes } from 'node:crypto';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { isVmmError, VmmError } from '../errors.js';
import { runCommand } from '../util/exec.js';
import { Reverter } from '../util/reverter.js';

/** A value cloud-init reads from meta-data: written as JSON, which YAML parses as the same value. */
export type MetaDataValue =
  | string
  | number
  | boolean
  | null
  | MetaDataValue[]
  | { [key: string]: MetaDataValue };

/** What goes into a NoCloud seed. */
export interface NoCloudSeedSpec {
  /** cloud-init runs its per-instance modules again whenever this changes. */
  instanceId: string;
  /** RFC 1123 host name, written as `local-hostname`. */
  hostname: string;
  /** Raw user-data (`#cloud-config ...`, a script or MIME multipart); default `#cloud-config\n{}`. */
  userData?: string;
  /** Network config version 1 or 2 (YAML text); omitted from the seed when absent. */
  networkConfig?: string;
  /** More meta-data keys (e.g. `public-keys`); may not repeat `instance-id` or `local-hostname`. */
  extraMetaData?: Record<string, MetaDataValue>;
}

/** The files read back from a NoCloud seed. */
export interface NoCloudSeedContent {
  /** The volume label (`CIDATA`). */
  label: string;
  metaData: string;
  userData: string;
  networkConfig: string | undefined;
}

/** Volume label the NoCloud datasource looks for (it matches `cidata` case-insensitively). */
export const SEED_LABEL = 'CIDATA';
/** Largest user-data (and network-config) accepted, in bytes. */
export const MAX_USER_DATA_BYTES = 1024 * 1024;
/** Instance ids: letters, digits, `.`, `_`, `-` (nothing YAML could misread). */
export const INSTANCE_ID_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

const DEFAULT_USER_DATA = '#cloud-config\n{}\n';
const HOSTNAME_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const META_DATA_KEY = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const RESERVED_KEYS = new Set(['instance-id', 'local-hostname']);
const TOOL_TIMEOUT_MS = 30_000;
// mtools refuses images whose geometry it finds odd unless told not to check.
const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: '1', LC_ALL: 'C' };

/**
 * Writes a NoCloud seed: a small raw vfat image labelled `CIDATA` holding `meta-data`, `user-data`
 * and, when given, `network-config`. Built with `mkfs.vfat` and `mcopy`, without mounting. The
 * image is assembled next to `path` and renamed over it, so a reader never sees half a seed.
 *
 * @throws VmmError `INVALID_SPEC` for a bad host name, instance id, meta-data key or oversized
 *   user-data; `SEED_ERROR` when building the image fails.
 */
export async function buildNoCloudSeed(path: string, spec: NoCloudSeedSpec): Promise<void> {
  const metaData = renderMetaData(spec);
  const userData = spec.userData ?? DEFAULT_USER_DATA;
  assertMaxBytes('userData', userData);
  if (spec.networkConfig !== undefined) assertMaxBytes('networkConfig', spec.networkConfig);

  const files: [name: string, content: string][] = [
    ['meta-data', metaData],
    ['user-data', userData],
  ];
  if (spec.networkConfig !== undefined) files.push(['network-config', spec.networkConfig]);

  const reverter = new Reverter();
  const staging = await mkdtemp(join(tmpdir(), 'hangar-seed-')).catch((err: unknown) => {
    throw seedError(`cannot create a staging folder for ${path}`, err);
  });
  // The staging folder goes on success too; only the finished image is kept.
  const cleanupStaging = () => rm(staging, { recursive: true, force: true });
  const partial = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.partial`);
  try {
    reverter.add(() => rm(partial, { force: true }), 'remove partial seed image');
    const contentBytes = files.reduce((sum, [, content]) => sum + Buffer.byteLength(content), 0);
    await tool('mkfs.vfat', ['-n', SEED_LABEL, '-C', partial, String(imageSizeKiB(contentBytes))]);
    for (const [name, content] of files) {
      const source = join(staging, name);
      await writeFile(source, content);
      await tool('mcopy', ['-i', partial, source, `::/${name}`]);
    }
    await rename(partial, path).catch((err: unknown) => {
      throw seedError(`cannot move the seed image into place at ${path}`, err);
    });
    reverter.success();
  } finally {
    await reverter.fail();
    await cleanupStaging();
  }
}

/**
 * Reads a NoCloud seed back with mtools (no mount).
 *
 * @throws VmmError `SEED_ERROR` when the file is not a FAT image or lacks meta-data or user-data.
 */
export async function readNoCloudSeed(path: string): Promise<NoCloudSeedContent> {
  const labelOut = await tool('mlabel', ['-i', path, '-s', '::']);
  const label = /Volume label is (.*)$/m.exec(labelOut)?.[1]?.trim() ?? '';
  const listing = await tool('mdir', ['-b', '-i', path, '::/']);
  const names = new Set(
    listing
      .split('\n')
      .map((line) => line.trim().replace(/^::\//, ''))
      .filter((line) => line !== ''),
  );
  for (const required of ['meta-data', 'user-data']) {
    if (!names.has(required)) {
      throw new VmmError('SEED_ERROR', `${path} is not a NoCloud seed: ${required} is missing`, {
        details: { path, files: [...names] },
      });
    }
  }
  const read = (name: string) => tool('mcopy', ['-n', '-i', path, `::/${name}`, '-']);
  return {
    label,
    metaData: await read('meta-data'),
    userData: await read('user-data'),
    networkConfig: names.has('network-config') ? await read('network-config') : undefined,
  };
}

/**
 * Checks an RFC 1123 host name: dot-separated labels of 1-63 letters, digits and inner hyphens,
 * at most 253 characters in all.
 *
 * @throws VmmError `INVALID_SPEC`
 */
export function assertHostname(hostname: string): void {
  const labels = hostname.split('.');
  if (hostname.length < 1 || hostname.length > 253 || !labels.every((label) => HOSTNAME_LABEL.test(label))) {
    throw new VmmError(
      'INVALID_SPEC',
      `invalid host name '${hostname}': use dot-separated labels of 1-63 letters, digits and inner hyphens, at most 253 characters`,
      { details: { hostname } },
    );
  }
}

/**
 * Renders `meta-data` as YAML. Values are written as JSON strings, which YAML reads back
 * unchanged, so an id such as `1234` or `yes` stays a string.
 */
export function renderMetaData(
  spec: Pick<NoCloudSeedSpec, 'instanceId' | 'hostname' | 'extraMetaData'>,
): string {
  if (!INSTANCE_ID_PATTERN.test(spec.instanceId)) {
    throw new VmmError(
      'INVALID_SPEC',
      `invalid instance id '${spec.instanceId}': use 1-128 letters, digits, '.', '_' or '-'`,
      { details: { instanceId: spec.instanceId } },
    );
  }
  assertHostname(spec.hostname);
  const lines = [
    `instance-id: ${JSON.stringify(spec.instanceId)}`,
    `local-hostname: ${JSON.stringify(spec.hostname)}`,
  ];
  for (const [key, value] of Object.entries(spec.extraMetaData ?? {})) {
    if (!META_DATA_KEY.test(key) || RESERVED_KEYS.has(key)) {
      throw new VmmError('INVALID_SPEC', `invalid meta-data key '${key}'`, { details: { key } });
    }
    lines.push(`${key}: ${metaDataJson(key, value)}`);
  }
  return `${lines.join('\n')}\n`;
}

function metaDataJson(key: string, value: MetaDataValue): string {
  const finite = (v: MetaDataValue): boolean =>
    typeof v === 'number'
      ? Number.isFinite(v)
      : Array.isArray(v)
        ? v.every(finite)
        : v !== null && typeof v === 'object'
          ? Object.values(v).every(finite)
          : true;
  if (!finite(value)) {
    throw new VmmError('INVALID_SPEC', `meta-data '${key}' holds a number that is not finite`, {
      details: { key },
    });
  }
  return JSON.stringify(value);
}

function assertMaxBytes(field: string, text: string): void {
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_USER_DATA_BYTES) {
    throw new VmmError(
      'INVALID_SPEC',
      `${field} is ${bytes} bytes; at most ${MAX_USER_DATA_BYTES} are allowed`,
      {
        details: { field, bytes, limit: MAX_USER_DATA_BYTES },
      },
    );
  }
}

/** Room for the content plus FAT overhead and slack, never less than 1 MiB. */
function imageSizeKiB(contentBytes: number): number {
  return Math.max(1024, Math.ceil((contentBytes * 1.25) / 1024) + 512);
}

async function tool(file: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await runCommand(file, args, { timeoutMs: TOOL_TIMEOUT_MS, env: MTOOLS_ENV });
    return stdout;
  } catch (err) {
    if (isVmmError(err, 'COMMAND_FAILED') || isVmmError(err, 'TIMEOUT')) {
      throw new VmmError('SEED_ERROR', err.message, { cause: err, details: err.details });
    }
    throw err;
  }
}

function seedError(message: string, cause: unknown): VmmError {
  const reason = cause instanceof Error ? `: ${cause.message}` : '';
  return new VmmError('SEED_ERROR', `${message}${reason}`, { cause });
}
