/**
 * bench/api baseline: the floor `GET /v1/vms` is measured against. A bare Fastify server with a
 * node-postgres pool that runs, for every request, the very SQL Prisma sends for the api's list
 * query (VmsService.list: the caller's project, live VMs, keyset order, page_size + 1 rows) and
 * answers the same JSON body (the api's VM representation and next_page_token). No auth, no
 * validation, no logging, no framework above Fastify: what the api adds is the difference.
 *
 * Run by api.bench.ts as a child process: `node baseline-server.js` with BASELINE_DATABASE_URL,
 * BASELINE_PROJECT_ID, BASELINE_PORT and BASELINE_POOL_MAX in the environment. Prints
 * `listening <port>` on stdout once it accepts connections; stops on SIGTERM.
 */
import { canonicalHash } from '@hangar/api/dist/common/util/canonical-json.js';
import Fastify from 'fastify';
import pg from 'pg';
import { LIST_VMS_SQL } from './list-query.js';

interface VmRow {
  id: string;
  project_id: string;
  name: string;
  flavor_id: string;
  image_id: string;
  host_id: string | null;
  vcpus: number;
  memory_mib: number;
  disk_gib: number;
  desired_state: string;
  observed_state: string;
  version: number;
  labels: Record<string, string> | null;
  anti_affinity_group: string | null;
  cpu_model: string;
  machine_type: string;
  error_message: string | null;
  created_at: Date;
  updated_at: Date;
}

/** The api's VM representation (toVmDto), field for field. */
function toDto(row: VmRow) {
  return {
    id: row.id,
    project_id: row.project_id,
    name: row.name,
    flavor_id: row.flavor_id,
    image_id: row.image_id,
    host_id: row.host_id,
    vcpus: row.vcpus,
    memory_mib: row.memory_mib,
    disk_gib: row.disk_gib,
    status: row.observed_state,
    desired_state: row.desired_state,
    labels: row.labels ?? {},
    anti_affinity_group: row.anti_affinity_group,
    cpu_model: row.cpu_model,
    machine_type: row.machine_type,
    error_message: row.error_message,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
    etag: String(row.version),
  };
}

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
}

async function main(): Promise<void> {
  const projectId = env('BASELINE_PROJECT_ID');
  const pool = new pg.Pool({
    connectionString: env('BASELINE_DATABASE_URL'),
    max: Number(process.env.BASELINE_POOL_MAX ?? '10'),
    application_name: 'hangar-bench-baseline',
  });
  const app = Fastify({ logger: false });
  app.get<{ Querystring: { page_size?: string } }>('/v1/vms', async (request) => {
    const size = Math.min(500, Math.max(1, Number(request.query.page_size ?? '50') || 50));
    const { rows } = await pool.query<VmRow>(LIST_VMS_SQL, [projectId, size + 1, 0]);
    const items = rows.slice(0, size);
    const last = items.at(-1);
    // The same token the api issues (pagination.ts): where the next page starts, bound to the list.
    const scope = { list: 'vms', projectId };
    const next =
      rows.length > size && last
        ? Buffer.from(
            JSON.stringify({
              v: 1,
              t: last.created_at.getTime(),
              i: last.id,
              s: canonicalHash(scope).slice(0, 16),
            }),
          ).toString('base64url')
        : null;
    return { items: items.map(toDto), next_page_token: next };
  });
  const port = Number(process.env.BASELINE_PORT ?? '0');
  await app.listen({ host: '127.0.0.1', port });
  const address = app.server.address();
  process.stdout.write(`listening ${typeof address === 'object' && address ? address.port : port}\n`);
  const stop = () => {
    void app
      .close()
      .then(() => pool.end())
      .then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`baseline server failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
