import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../../../packages/vmm-core/test/support/test-host.js';
import { AgentGatewayServer } from '../src/infra/grpc/agent-gateway.server.js';
import { EventFeed } from '../src/modules/events/event-feed.js';
import { EventsService } from '../src/modules/events/events.service.js';
import type { OpenApiDocument } from '../src/modules/openapi/openapi.builder.js';
import {
  createProject,
  expectExchangesConform,
  expectProblem,
  json,
  startTestApp,
  type TestApp,
  type TestProject,
} from './support/app.js';
import {
  createTestRedis,
  joinToken,
  startTestAgent,
  type TestAgent,
  type TestRedis,
  testSettings,
  useSettingsEnv,
} from './support/cluster.js';
import { SseClient } from './support/sse.js';

interface EventBody {
  id: string;
  kind: string;
  resource_type: string;
  resource_id: string;
  project_id: string | null;
  data: Record<string, unknown>;
  at: string;
}

interface OperationBody {
  id: string;
  status: string;
}

const EVENTS_ENV = {
  HANGAR_EVENTS_POLL_MS: '100',
  HANGAR_EVENTS_KEEPALIVE_MS: '400',
  HANGAR_EVENTS_GAP_GRACE_MS: '200',
};

/** Puts the events tuning into the environment the app reads at start; returns the undo. */
function useEventsEnv(values: Record<string, string>): () => void {
  const previous = Object.fromEntries(Object.keys(values).map((k) => [k, process.env[k]]));
  Object.assign(process.env, values);
  return () => {
    for (const [key, value] of Object.entries(previous)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  };
}

function ids(events: readonly { id: string }[]): bigint[] {
  return events.map((e) => BigInt(e.id));
}

function expectIncreasing(values: readonly bigint[]): void {
  for (let i = 1; i < values.length; i += 1) {
    expect(values[i]! > values[i - 1]!, `ids in order: ${values.join(',')}`).toBe(true);
  }
}

describe('GET /v1/events and the SSE stream on a cluster with a fake-driver agent', () => {
  let redis: TestRedis;
  let app: TestApp;
  let agent: TestAgent;
  let alpha: TestProject;
  let beta: TestProject;
  let restoreEnv: () => void;
  let restoreEventsEnv: () => void;
  const open: SseClient[] = [];

  beforeAll(async () => {
    redis = await createTestRedis();
    restoreEnv = useSettingsEnv(testSettings());
    restoreEventsEnv = useEventsEnv(EVENTS_ENV);
    app = await startTestApp({
      env: { HANGAR_ROLE: 'all', REDIS_URL: redis.url, HANGAR_REDIS_PREFIX: redis.prefix },
    });
    const gateway = app.running.app.get(AgentGatewayServer, { strict: false }).address;
    agent = await startTestAgent({
      name: 'events-host',
      gatewayAddress: gateway,
      joinToken: await joinToken(app.db),
    });
    await agent.whenConnected();
    await eventually(async () =>
      (await app.db.prisma.host.count({ where: { state: 'UP' } })) === 1 ? true : undefined,
    );
    await app.db.prisma.flavor.create({ data: { name: 'tiny', vcpus: 1, memoryMib: 256, diskGib: 1 } });
    await app.db.prisma.image.create({
      data: {
        name: 'hangar-tiny',
        pool: 'images',
        kernelPath: 'vmlinuz',
        initrdPath: 'initrd.img',
        diskPath: 'base.qcow2',
      },
    });
    alpha = await createProject(app.db, 'alpha');
    beta = await createProject(app.db, 'beta');
  });
  afterAll(async () => {
    for (const client of open) await client.close().catch(() => undefined);
    await agent?.stop();
    await app?.close();
    await redis?.cleanup();
    restoreEventsEnv?.();
    restoreEnv?.();
  });

  async function stream(
    token: string,
    url = '/v1/events/stream',
    headers: Record<string, string> = {},
  ): Promise<SseClient> {
    const client = await SseClient.open(app.baseUrl, url, { token, headers, exchanges: app.exchanges });
    open.push(client);
    return client;
  }

  async function finish(token: string, res: { status: number; body: unknown }): Promise<OperationBody> {
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const operation = (res.body as { operation?: OperationBody }).operation ?? (res.body as OperationBody);
    const done = await app.client(token).get(`/v1/operations/${operation.id}/wait?timeout=20s`);
    expect((done.body as OperationBody).status).toBe('SUCCEEDED');
    return done.body as OperationBody;
  }

  async function createVm(token: string, name: string): Promise<string> {
    const res = await app.client(token).post('/v1/vms', { name, flavor: 'tiny', image: 'hangar-tiny' });
    await finish(token, res);
    return (json(res).vm as { id: string }).id;
  }

  /** The `to` states of a VM's state-change events, in order. */
  function statesOf(events: readonly EventBody[], vmId: string): string[] {
    return events
      .filter((e) => e.resource_id === vmId && e.kind === 'vm.state_changed')
      .map((e) => String(e.data.to));
  }

  it('lists events newest first with filters, pages and the after cursor, each project its own', async () => {
    const a = await createVm(alpha.member, 'list-a');
    const b = await createVm(beta.member, 'list-b');
    const member = app.client(alpha.reader);

    const all = json(await member.get('/v1/events?page_size=500')).items as EventBody[];
    expect(all.length).toBeGreaterThan(3);
    expect(all.every((e) => e.project_id === alpha.id)).toBe(true);
    expect(all.some((e) => e.resource_id === b)).toBe(false);
    expect(ids(all).reverse()).toEqual([...ids(all)].sort((x, y) => (x < y ? -1 : 1)));
    expect(all.find((e) => e.kind === 'vm.created')?.resource_id).toBe(a);
    expect(statesOf([...all].reverse(), a)).toEqual(['SCHEDULING', 'CREATING', 'RUNNING']);
    expect(all.some((e) => e.resource_type === 'operation' && e.kind === 'operation.succeeded')).toBe(true);

    // Filters.
    const ofVm = json(await member.get(`/v1/events?resource_id=${a}&kind=vm.state_changed`))
      .items as EventBody[];
    expect(ofVm.map((e) => e.data.to)).toEqual(['RUNNING', 'CREATING', 'SCHEDULING']);
    const ops = json(await member.get('/v1/events?resource_type=operation')).items as EventBody[];
    expect(ops.length).toBeGreaterThan(0);
    expect(ops.every((e) => e.resource_type === 'operation')).toBe(true);
    const future = new Date(Date.now() + 3_600_000).toISOString();
    expect(json(await member.get(`/v1/events?since=${encodeURIComponent(future)}`)).items).toEqual([]);
    const oldest = all[all.length - 1]!;
    const sinceOldest = json(
      await member.get(`/v1/events?page_size=500&since=${encodeURIComponent(oldest.at)}`),
    ).items as EventBody[];
    expect(sinceOldest.length).toBe(all.filter((e) => e.at >= oldest.at).length);

    // Pages: newest first, no overlap, the same items as one big page.
    const paged: EventBody[] = [];
    let token: string | null = null;
    for (let i = 0; i < 100; i += 1) {
      const res = await member.get(`/v1/events?page_size=2${token ? `&page_token=${token}` : ''}`);
      const page = json(res) as { items: EventBody[]; next_page_token: string | null };
      paged.push(...page.items);
      token = page.next_page_token;
      if (!token) break;
    }
    expect(ids(paged)).toEqual(ids(all));
    // The after cursor: oldest first from there, in pages.
    const cursor = all[all.length - 3]!.id;
    const after1 = json(await member.get(`/v1/events?after=${cursor}&page_size=1`)) as {
      items: EventBody[];
      next_page_token: string;
    };
    const after2 = json(
      await member.get(`/v1/events?after=${cursor}&page_size=1&page_token=${after1.next_page_token}`),
    ).items as EventBody[];
    expect([...after1.items, ...after2].map((e) => e.id)).toEqual([
      all[all.length - 4]!.id,
      all[all.length - 5]!.id,
    ]);

    // Tenancy: beta never sees alpha's events, not even by naming them.
    const beta1 = json(await app.client(beta.member).get(`/v1/events?resource_id=${a}`)).items;
    expect(beta1).toEqual([]);
    expect(json(await app.client(beta.member).get(`/v1/events?project_id=${alpha.id}`)).items).toEqual([]);
    const betaAll = json(await app.client(beta.member).get('/v1/events?page_size=500')).items as EventBody[];
    expect(betaAll.length).toBeGreaterThan(0);
    expect(betaAll.every((e) => e.project_id === beta.id)).toBe(true);
    // Admins see every project and the cluster's own events (hosts).
    const admin = json(await app.admin.get('/v1/events?page_size=500')).items as EventBody[];
    expect(admin.some((e) => e.resource_id === a)).toBe(true);
    expect(admin.some((e) => e.resource_id === b)).toBe(true);
    expect(admin.some((e) => e.resource_type === 'host' && e.project_id === null)).toBe(true);
    const adminBeta = json(await app.admin.get(`/v1/events?project_id=${beta.id}&page_size=500`))
      .items as EventBody[];
    expect(ids(adminBeta)).toEqual(ids(betaAll));

    // Bad queries are 400 problems.
    expectProblem(await member.get('/v1/events?page_token=garbage!'), 400, 'VALIDATION_FAILED');
    expectProblem(
      await member.get(`/v1/events?page_size=1&page_token=${after1.next_page_token}`),
      400,
      'VALIDATION_FAILED',
    );
    expectProblem(await member.get('/v1/events?after=-1'), 400, 'VALIDATION_FAILED');
    expectProblem(await member.get('/v1/events?since=yesterday'), 400, 'VALIDATION_FAILED');
    expectProblem(await member.get('/v1/events?kind=Not%20A%20Kind'), 400, 'VALIDATION_FAILED');
    expectProblem(await member.get('/v1/events?colour=red'), 400, 'VALIDATION_FAILED');
    expectProblem(await app.client().get('/v1/events', { token: null }), 401, 'UNAUTHENTICATED');
  });

  it('streams a new VM’s state changes in order, only to its own project', async () => {
    const mine = await stream(alpha.reader);
    const theirs = await stream(beta.member);
    for (const client of [mine, theirs]) {
      expect(client.response.status).toBe(200);
      expect(client.response.headers.get('content-type')).toMatch(/^text\/event-stream/);
      expect(client.response.headers.get('cache-control')).toBe('no-cache');
    }
    await mine.waitFor((c) => c.comments.includes('connected'), 5_000, 'the connected comment');
    expect(mine.retryMs).toBe(2_000);

    const res = await app
      .client(alpha.member)
      .post('/v1/vms', { name: 'stream-1', flavor: 'tiny', image: 'hangar-tiny' });
    const vmId = (json(res).vm as { id: string }).id;
    await finish(alpha.member, res);
    const events = await mine.waitFor(
      (c) => {
        const got = c.json<EventBody>();
        return statesOf(got, vmId).includes('RUNNING') && got.some((e) => e.kind === 'operation.succeeded')
          ? got
          : undefined;
      },
      15_000,
      'the VM to reach RUNNING on the stream',
    );
    expect(statesOf(events, vmId)).toEqual(['SCHEDULING', 'CREATING', 'RUNNING']);
    const created = events.findIndex((e) => e.kind === 'vm.created' && e.resource_id === vmId);
    expect(events[created]).toMatchObject({ project_id: alpha.id });
    expect(events.findIndex((e) => e.resource_id === vmId)).toBe(created);
    // SSE fields: id = the event's id (ascending), event = its kind.
    expectIncreasing(ids(events));
    for (const [i, message] of mine.messages.entries()) {
      expect(message.id).toBe(events[i]!.id);
      expect(message.event).toBe(events[i]!.kind);
    }
    // The same events, in the same order, as the list reads from the table.
    const listed = json(
      await app.client(alpha.reader).get(`/v1/events?after=${BigInt(events[0]!.id) - 1n}&page_size=500`),
    ).items as EventBody[];
    expect(ids(listed).slice(0, events.length)).toEqual(ids(events));
    // Every message is an Event of the OpenAPI document.
    const document = (await app.client().get('/openapi.json')).body as OpenApiDocument;
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    addFormats.default(ajv);
    ajv.addSchema({ ...document, $id: 'doc.json' });
    const validate = ajv.getSchema('doc.json#/components/schemas/Event');
    for (const event of events) expect(validate?.(event), JSON.stringify(validate?.errors)).toBe(true);

    // Idle streams get keep-alive comments; the other project got nothing of this VM.
    await mine.waitFor((c) => c.comments.includes('keep-alive'), 5_000, 'a keep-alive comment');
    await theirs.waitFor((c) => c.comments.includes('keep-alive'), 5_000, 'a keep-alive comment');
    expect(theirs.json<EventBody>().filter((e) => e.project_id !== beta.id)).toEqual([]);
    expect(theirs.json<EventBody>().some((e) => e.resource_id === vmId)).toBe(false);
    // An admin stream filtered to the VM sees its events too (kind filter on the stream).
    await mine.close();
    await theirs.close();
  });

  it('resumes with Last-Event-ID after a disconnect: nothing lost, nothing twice', async () => {
    const vmId = await createVm(alpha.member, 'resume-1');
    const service = app.running.app.get(EventsService, { strict: false });
    const before = service.openStreams;
    // From the beginning of the VM's history (`after=0`), so both connections together must
    // read exactly what the table holds for it.
    const first = await stream(alpha.member, `/v1/events/stream?resource_id=${vmId}&after=0`);
    await eventually(async () => (service.openStreams === before + 1 ? true : undefined), {
      what: 'the stream to open',
    });
    await finish(alpha.member, await app.client(alpha.member).post(`/v1/vms/${vmId}/stop`, { force: true }));
    const seen = await first.waitFor(
      (c) => (statesOf(c.json<EventBody>(), vmId).includes('STOPPED') ? c.json<EventBody>() : undefined),
      10_000,
      'STOPPED on the first connection',
    );
    await first.close();
    // The server lets go of a stream whose client left.
    await eventually(async () => (service.openStreams === before ? true : undefined), {
      timeoutMs: 5_000,
      what: 'the server to close the stream of a client that left',
    });

    // Events happen while nobody listens.
    await finish(alpha.member, await app.client(alpha.member).post(`/v1/vms/${vmId}/start`));
    await finish(alpha.member, await app.client(alpha.member).post(`/v1/vms/${vmId}/pause`));
    const last = seen[seen.length - 1]!.id;
    const second = await stream(alpha.member, `/v1/events/stream?resource_id=${vmId}`, {
      'Last-Event-ID': last,
    });
    await finish(alpha.member, await app.client(alpha.member).post(`/v1/vms/${vmId}/resume`));
    const resumed = await second.waitFor(
      (c) => {
        const got = c.json<EventBody>();
        return got.filter((e) => e.kind === 'vm.state_changed').length >= 3 ? got : undefined;
      },
      10_000,
      'the missed and the new state changes',
    );
    expect(statesOf(resumed, vmId)).toEqual(['RUNNING', 'PAUSED', 'RUNNING']);
    const together = [...seen, ...resumed];
    expectIncreasing(ids(together));
    // Exactly the VM's events in the table, once each, in order.
    const rows = await app.db.prisma.event.findMany({ where: { resourceId: vmId }, orderBy: { id: 'asc' } });
    const upTo = BigInt(resumed[resumed.length - 1]!.id);
    expect(ids(together)).toEqual(rows.map((r) => r.id).filter((id) => id <= upTo));
    expect(statesOf(seen, vmId)).toEqual(['SCHEDULING', 'CREATING', 'RUNNING', 'STOPPED']);
    // A bad Last-Event-ID is a 400 problem, not a stream.
    const bad = await app
      .client(alpha.member)
      .get('/v1/events/stream', { headers: { 'Last-Event-ID': 'abc' } });
    expectProblem(bad, 400, 'VALIDATION_FAILED');
    await second.close();
  });

  it('holds back an event whose id is passed by a later commit until it commits, and skips rolled-back ids', async () => {
    const feed = app.running.app.get(EventFeed, { strict: false });
    const resource = '11111111-1111-4111-8111-111111111111';
    const client = await stream(alpha.member, `/v1/events/stream?resource_id=${resource}`);
    await client.waitFor((c) => c.comments.includes('connected'), 5_000, 'the stream to open');
    const insert = `INSERT INTO events (resource_type, resource_id, project_id, kind, data)
                    VALUES ('vm', $1, $2, $3, '{}') RETURNING id::text AS id`;
    const slow = new pg.Client({ connectionString: app.db.url });
    const aborted = new pg.Client({ connectionString: app.db.url });
    await slow.connect();
    await aborted.connect();
    try {
      // A transaction takes id n and stays open; n+1 commits at once.
      await slow.query('BEGIN');
      const early = (await slow.query<{ id: string }>(insert, [resource, alpha.id, 'test.early'])).rows[0]!
        .id;
      await aborted.query('BEGIN');
      const lost = (await aborted.query<{ id: string }>(insert, [resource, alpha.id, 'test.rolled-back']))
        .rows[0]!.id;
      const late = (
        await app.db.prisma.$queryRawUnsafe<{ id: string }[]>(insert, resource, alpha.id, 'test.late')
      )[0]!.id;
      expect(BigInt(early) < BigInt(lost) && BigInt(lost) < BigInt(late)).toBe(true);
      // The later event is committed, but the stream must not pass the open gap before it.
      await new Promise((r) => setTimeout(r, 1_000));
      expect(client.messages).toEqual([]);
      expect(feed.openGaps).toBeGreaterThan(0);
      const listed = json(
        await app.client(alpha.member).get(`/v1/events?resource_id=${resource}&after=0`),
      ).items;
      expect(listed).toEqual([]);
      await slow.query('COMMIT');
      await client.waitFor((c) => c.messages.length >= 1, 5_000, 'the early event');
      // The rolled-back id still holds the late one back while its transaction runs…
      await new Promise((r) => setTimeout(r, 600));
      expect(client.messages.map((m) => m.id)).toEqual([early]);
      await aborted.query('ROLLBACK');
      // …and is given up once it ended.
      await client.waitFor((c) => c.messages.length >= 2, 5_000, 'the late event');
      expect(client.messages.map((m) => [m.id, m.event])).toEqual([
        [early, 'test.early'],
        [late, 'test.late'],
      ]);
    } finally {
      await slow.end().catch(() => undefined);
      await aborted.end().catch(() => undefined);
      await client.close();
    }
  });

  it('documents the stream as text/event-stream and answers as the OpenAPI document says', async () => {
    const document = (await app.client().get('/openapi.json')).body as OpenApiDocument;
    const op = document.paths['/v1/events/stream']?.get as {
      responses: Record<string, { content?: Record<string, unknown> }>;
      parameters: { name: string }[];
    };
    expect(Object.keys(op.responses['200']?.content ?? {})).toEqual(['text/event-stream']);
    expect(op.parameters.map((p) => p.name)).toEqual(
      expect.arrayContaining(['resource_id', 'kind', 'after']),
    );
    expect(document.paths['/v1/events']?.get).toBeDefined();
    const checks = await expectExchangesConform(app);
    const covered = new Set(
      checks.filter((c) => c.operation && c.errors.length === 0).map((c) => c.operation),
    );
    expect(covered.has('GET /v1/events')).toBe(true);
    expect(covered.has('GET /v1/events/stream')).toBe(true);
  });
});

describe('event streams on shutdown', () => {
  it('ends open streams at once when the server closes', async () => {
    const restore = useEventsEnv({ HANGAR_EVENTS_KEEPALIVE_MS: '60000' });
    const app = await startTestApp();
    let client: SseClient | undefined;
    try {
      client = await SseClient.open(app.baseUrl, '/v1/events/stream', {
        token: (await createProject(app.db, 'shut')).member,
      });
      expect(client.response.status).toBe(200);
      await client.waitFor((c) => c.comments.includes('connected'), 5_000, 'the stream to open');
      const started = Date.now();
      await app.running.close();
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(await client.waitForEnd(5_000)).toBe(true);
    } finally {
      await client?.close().catch(() => undefined);
      await app.close();
      restore();
    }
  });
});
