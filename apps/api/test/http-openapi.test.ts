import { Controller, Get, Module } from '@nestjs/common';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../src/errors/error-codes.js';
import type { JsonObject, OpenApiDocument } from '../src/modules/openapi/openapi.builder.js';
import { createProject, expectExchangesConform, json, startTestApp, type TestApp } from './support/app.js';

/** The operations of the resources this suite covers; the suites of other resources cover theirs. */
const OPERATIONS = [
  'getLiveness',
  'getReadiness',
  'getOpenApiDocument',
  'getDocsPage',
  'createProject',
  'listProjects',
  'getProject',
  'updateProject',
  'deleteProject',
  'getProjectQuota',
  'putProjectQuota',
  'createApiKey',
  'listApiKeys',
  'getApiKey',
  'revokeApiKey',
  'createFlavor',
  'listFlavors',
  'getFlavor',
  'deleteFlavor',
  'createImage',
  'listImages',
  'getImage',
  'deleteImage',
  'listHosts',
  'getHost',
  'updateHost',
  'cordonHost',
  'uncordonHost',
  'deleteHost',
  'createJoinToken',
  'listJoinTokens',
  'getJoinToken',
  'revokeJoinToken',
];

describe('OpenAPI document', () => {
  let app: TestApp;
  let document: OpenApiDocument;

  beforeAll(async () => {
    app = await startTestApp();
    const res = await app.client().get('/openapi.json');
    expect(res.status).toBe(200);
    document = res.body as OpenApiDocument;
  });
  afterAll(async () => {
    await app?.close();
  });

  function operations(): { path: string; method: string; op: JsonObject }[] {
    return Object.entries(document.paths).flatMap(([path, item]) =>
      Object.entries(item).map(([method, op]) => ({ path, method, op })),
    );
  }

  it('is OpenAPI 3.1 whose schemas are valid JSON Schema 2020-12 and whose references resolve', () => {
    expect(document.openapi).toBe('3.1.0');
    const ajv = new Ajv2020({ strict: false, validateFormats: true });
    addFormats.default(ajv);
    ajv.addSchema({ ...document, $id: 'doc.json' });
    for (const name of Object.keys(document.components.schemas)) {
      expect(() => ajv.getSchema(`doc.json#/components/schemas/${name}`), name).not.toThrow();
    }
    const refs = JSON.stringify(document).match(/"\$ref":"#\/components\/schemas\/[^"]+"/g) ?? [];
    for (const ref of refs) {
      const name = ref.slice('"$ref":"#/components/schemas/'.length, -1);
      expect(document.components.schemas, ref).toHaveProperty(name);
    }
    const ids = operations().map(({ op }) => op.operationId);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('declares every path parameter, a success response and the problems of each operation', () => {
    for (const { path, method, op } of operations()) {
      const name = `${method.toUpperCase()} ${path}`;
      const params = (op.parameters ?? []) as { name: string; in: string }[];
      for (const match of path.matchAll(/\{([^}]+)\}/g)) {
        expect(params, name).toContainEqual(expect.objectContaining({ name: match[1], in: 'path' }));
      }
      const statuses = Object.keys(op.responses as object);
      expect(
        statuses.some((s) => s.startsWith('2')),
        name,
      ).toBe(true);
      expect(statuses, name).toContain('500');
      if (!Array.isArray(op.security)) expect(statuses, name).toContain('401');
      if (method === 'post')
        expect(
          params.map((p) => p.name),
          name,
        ).toContain('Idempotency-Key');
      if (params.some((p) => p.name === 'If-Match')) expect(statuses, name).toContain('412');
      // Every resource of this suite with an id honours If-Match on its writes.
      if (
        OPERATIONS.includes(String(op.operationId)) &&
        ['patch', 'put', 'delete'].includes(method) &&
        path.includes('{')
      ) {
        expect(
          params.map((p) => p.name),
          name,
        ).toContain('If-Match');
      }
    }
  });

  it('is generated from the zod schemas that validate requests', () => {
    const create = document.components.schemas.CreateFlavorRequest as JsonObject & {
      properties: Record<string, JsonObject>;
      required: string[];
    };
    expect(create.additionalProperties).toBe(false);
    expect(create.properties.name).toMatchObject({ type: 'string', minLength: 1, maxLength: 63 });
    expect(create.properties.vcpus).toMatchObject({ type: 'integer', minimum: 1, maximum: 256 });
    expect(create.properties.disk_gib).toMatchObject({ minimum: 0 });
    // A default makes a field optional on input.
    expect(create.required.sort()).toEqual(['disk_gib', 'memory_mib', 'name', 'vcpus']);
    const problem = document.components.schemas.Problem as { properties: Record<string, JsonObject> };
    expect(problem.properties.code?.enum).toEqual(ERROR_CODES);
    const listFlavors = document.paths['/v1/flavors']?.get as {
      parameters: { name: string; schema: JsonObject }[];
    };
    expect(listFlavors.parameters.find((p) => p.name === 'page_size')?.schema).toMatchObject({
      minimum: 1,
      maximum: 500,
      default: 50,
    });
    const admin = document.paths['/v1/flavors']?.post as JsonObject;
    expect(admin['x-hangar-roles']).toEqual(['admin']);
  });

  it('validates real responses of every endpoint against the document', async () => {
    const admin = app.admin;
    const tenant = await createProject(app.db, 'openapi-tenant');
    const member = app.client(tenant.member);
    const anonymous = app.client();

    await anonymous.get('/healthz');
    await anonymous.get('/readyz');
    await anonymous.get('/openapi.json');
    await anonymous.get('/docs');
    await anonymous.get('/v1/flavors');

    const project = json(await admin.post('/v1/projects', { name: 'tour', quota: { vcpus: 16 } }));
    const projectUrl = `/v1/projects/${String(project.id)}`;
    await admin.get('/v1/projects');
    await member.get('/v1/projects');
    await admin.get(projectUrl);
    await member.get(projectUrl);
    const patched = json(
      await admin.patch(
        projectUrl,
        { description: 'tour' },
        { headers: { 'If-Match': String(project.etag) } },
      ),
    );
    await admin.patch(
      projectUrl,
      { description: 'stale' },
      { headers: { 'If-Match': String(project.etag) } },
    );
    await admin.get(`${projectUrl}/quota`);
    await admin.put(
      `${projectUrl}/quota`,
      { vcpus: 4, memory_mib: 4096, vms: 2 },
      { headers: { 'If-Match': String(patched.etag) } },
    );
    await admin.post('/v1/projects', { name: 'tour' });

    const key = json(
      await admin.post('/v1/api-keys', { project_id: project.id, role: 'reader', name: 'tour' }),
    );
    await admin.get('/v1/api-keys?include_revoked=true&page_size=2');
    await admin.get(`/v1/api-keys/${String(key.id)}`);
    await admin.delete(`/v1/api-keys/${String(key.id)}`);
    await app.client(String(key.secret)).get('/v1/flavors');

    const flavor = json(
      await admin.post('/v1/flavors', { name: 'tour', vcpus: 2, memory_mib: 1024, disk_gib: 10 }),
    );
    await member.get('/v1/flavors?page_size=1');
    await member.get(`/v1/flavors/${String(flavor.id)}`);
    await member.post('/v1/flavors', { name: 'nope', vcpus: 1, memory_mib: 64, disk_gib: 0 });
    await admin.post('/v1/flavors', { name: 'tour', vcpus: -2 });

    const image = json(
      await admin.post('/v1/images', { name: 'tour', pool: 'default', kernel_path: 'k', initrd_path: 'i' }),
    );
    await member.get('/v1/images?pool=default');
    await member.get(`/v1/images/${String(image.id)}`);
    await admin.post('/v1/images', { name: 'tour-bad', pool: 'default' });

    const host = await app.db.prisma.host.create({
      data: {
        name: 'hv-tour',
        agentAddress: '127.0.0.1:7443',
        cores: 2,
        memoryMib: 4096,
        accelerator: 'tcg',
        state: 'UP',
      },
    });
    const hostUrl = `/v1/hosts/${host.id}`;
    await admin.get('/v1/hosts?state=UP');
    const h = json(await admin.get(hostUrl));
    await admin.patch(
      hostUrl,
      { cpu_allocation_ratio: 8, labels: { tier: 'gold' } },
      { headers: { 'If-Match': String(h.etag) } },
    );
    await admin.post(`${hostUrl}/cordon`, undefined, { headers: { 'Idempotency-Key': 'tour-cordon' } });
    await admin.post(`${hostUrl}/cordon`, undefined, { headers: { 'Idempotency-Key': 'tour-cordon' } });
    await admin.post(`${hostUrl}/uncordon`);
    await member.get('/v1/hosts');

    const token = json(await admin.post('/v1/join-tokens', { description: 'tour', ttl_seconds: 300 }));
    await admin.get('/v1/join-tokens');
    await admin.get(`/v1/join-tokens/${String(token.id)}`);
    await admin.delete(`/v1/join-tokens/${String(token.id)}`);

    await admin.delete(`/v1/images/${String(image.id)}`);
    await admin.delete(`/v1/flavors/${String(flavor.id)}`);
    await admin.delete(hostUrl);
    await admin.delete(hostUrl);
    await admin.delete(projectUrl);

    const checks = await expectExchangesConform(app);
    const covered = new Set(
      checks
        .filter((c) => c.operation && c.errors.length === 0 && c.exchange.status < 300)
        .map((c) => c.operation),
    );
    const mine = operations().filter(({ op }) => OPERATIONS.includes(String(op.operationId)));
    const missing = mine
      .map(({ path, method }) => `${method.toUpperCase()} ${path}`)
      .filter((name) => !covered.has(name));
    expect(missing).toEqual([]);
    expect(mine).toHaveLength(OPERATIONS.length);
  });

  it('refuses to start when a route bypasses @Endpoint', async () => {
    @Controller('v1/rogue')
    class RogueController {
      @Get()
      list(): string[] {
        return [];
      }
    }
    @Module({ controllers: [RogueController] })
    class RogueModule {}
    await expect(startTestApp({ extraModules: [RogueModule] })).rejects.toThrow(
      /routes without @Endpoint.*GET \/v1\/rogue/,
    );
  });
});
