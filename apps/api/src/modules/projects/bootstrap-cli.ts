/**
 * `node apps/api/dist/modules/projects/bootstrap-cli.js [options]`: makes a fresh cluster usable
 * (default project, admin API key, flavors tiny/small/medium, optionally an image) on DATABASE_URL,
 * idempotently. Prints one JSON object on stdout:
 * `{"project_id", "project_created", "admin_key": "hgr_…" | null, "admin_key_prefix", "flavors_created", "images_created"}`
 * — `admin_key` is the secret, shown only by the run that created it.
 *
 * Options: `--project NAME`, `--new-admin-key`, and to register an image: `--image-name NAME
 * --image-pool POOL [--image-kernel PATH] [--image-initrd PATH] [--image-cmdline TEXT]
 * [--image-disk PATH] [--image-format qcow2|raw]`. Exit status 0 on success, 1 on failure, 2 on bad usage.
 */
import { parseArgs } from 'node:util';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { CreateImageBodySchema } from '../images/image.schemas.js';
import { ensureBootstrap, type ImageSeed } from './ensure-bootstrap.js';

async function main(): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      options: {
        project: { type: 'string' },
        'new-admin-key': { type: 'boolean' },
        'image-name': { type: 'string' },
        'image-pool': { type: 'string' },
        'image-kernel': { type: 'string' },
        'image-initrd': { type: 'string' },
        'image-cmdline': { type: 'string' },
        'image-disk': { type: 'string' },
        'image-format': { type: 'string' },
      },
      strict: true,
    }));
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n`);
    return 2;
  }
  const url = process.env.DATABASE_URL;
  if (!url) {
    process.stderr.write('DATABASE_URL is not set\n');
    return 2;
  }
  const str = (key: string): string | undefined =>
    typeof values[key] === 'string' ? (values[key] as string) : undefined;
  const images: ImageSeed[] = [];
  if (str('image-name') !== undefined) {
    // The same rules as POST /v1/images.
    const parsed = CreateImageBodySchema.safeParse({
      name: str('image-name'),
      pool: str('image-pool'),
      kernel_path: str('image-kernel'),
      initrd_path: str('image-initrd'),
      cmdline: str('image-cmdline'),
      disk_path: str('image-disk'),
      format: str('image-format'),
    });
    if (!parsed.success) {
      process.stderr.write(
        `invalid image: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}\n`,
      );
      return 2;
    }
    const image = parsed.data;
    images.push({
      name: image.name,
      pool: image.pool,
      kernelPath: image.kernel_path,
      initrdPath: image.initrd_path,
      cmdline: image.cmdline,
      diskPath: image.disk_path,
      format: image.format,
    });
  }
  const prisma = new PrismaService({ url, poolMax: 2, applicationName: 'hangar-bootstrap' });
  try {
    const result = await ensureBootstrap(prisma, {
      ...(str('project') === undefined ? {} : { projectName: str('project') }),
      newAdminKey: values['new-admin-key'] === true,
      images,
    });
    process.stdout.write(
      `${JSON.stringify({
        project_id: result.projectId,
        project_created: result.projectCreated,
        admin_key: result.adminKey.token ?? null,
        admin_key_prefix: `hgr_${result.adminKey.prefix}`,
        flavors_created: result.flavorsCreated,
        images_created: result.imagesCreated,
      })}\n`,
    );
    return 0;
  } catch (error) {
    process.stderr.write(`bootstrap failed: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  } finally {
    await prisma.$disconnect();
  }
}

process.exitCode = await main();
