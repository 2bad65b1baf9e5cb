import { randomBytes } from 'node:crypto';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { expect } from 'vitest';
import type { ModuleImport } from '../../src/app.module.js';
import { loadConfig } from '../../src/config/hangar-config.js';
import type { ApiKeyRole } from '../../src/gen/prisma/enums.js';
import { type RunningHangar, startHangar } from '../../src/main.js';
import { generateApiKey } from '../../src/modules/auth/api-key-secret.js';
import type { OpenApiDocument } from '../../src/modules/openapi/openapi.builder.js';
import { createTestDatabase, type TestDatabase } from './db.js';

/** One HTTP request and its response, as the client saw them. */
export interface Exchange {
  readonly method: string;
  /** Path and query as sent. */
  readonly url: string;
  readonly status: number;
  readonly contentType: string;
  readonly headers: Headers;
  /** Parsed JSON when the response is JSON, the text otherwise, undefined when empty. */
  readonly body: unknown;
}

/** Options of one {@link ApiClient} request. */
export interface RequestOptions {
  /** Sent as JSON (unless `raw` is given). */
  readonly body?: unknown;
  /** Sent as it is, with `contentType` (default application/json). */
  readonly raw?: string | Uint8Array;
  readonly contentType?: string;
  readonly headers?: Record<string, string>;
  /** Override the client's key; null sends no Authorization header. */
  readonly token?: string | null;
}

/**
 * A tiny HTTP client over real `fetch` that records every exchange (for the OpenAPI
 * validation of real responses).
 */
export class ApiClient {
  constructor(
    readonly baseUrl: string,
    readonly token: string | undefined,
    private readonly recorded: Exchange[],
  ) {}

  /** The same client with another key. */
  as(token: string | undefined): ApiClient {
    return new ApiClient(this.baseUrl, token, this.recorded);
  }

  async request(method: string, url: string, options: RequestOptions = {}): Promise<Exchange> {
    const headers: Record<string, string> = { ...options.headers };
    const token = options.token === undefined ? this.token : options.token;
    if (token) headers.authorization = `Bearer ${token}`;
    let body: string | Uint8Array | undefined;
    if (options.raw !== undefined) {
      body = options.raw;
      headers['content-type'] = options.contentType ?? 'application/json';
    } else if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers['content-type'] = options.contentType ?? 'application/json';
    }
    const response = await fetch(`${this.baseUrl}${url}`, {
      method,
      headers,
      ...(body === undefined ? {} : { body }),
      signal: AbortSignal.timeout(15_000),
    });
    const text = await response.text();
    const contentType = response.headers.get('content-type') ?? '';
    let parsed: unknown = text.length === 0 ? undefined : text;
    if (text.length > 0 && /json/.test(contentType)) parsed = JSON.parse(text) as unknown;
    const exchange: Exchange = {
      method,
      url,
      status: response.status,
      contentType,
      headers: response.headers,
      body: parsed,
    };
    this.recorded.push(exchange);
    return exchange;
  }

  get(url: string, options?: RequestOptions): Promise<Exchange> {
    return this.request('GET', url, options);
  }
  post(url: string, body?: unknown, options: RequestOptions = {}): Promise<Exchange> {
    return this.request('POST', url, { ...options, ...(body === undefined ? {} : { body }) });
  }
  patch(url: string, body?: unknown, options: RequestOptions = {}): Promise<Exchange> {
    return this.request('PATCH', url, { ...options, ...(body === undefined ? {} : { body }) });
  }
  put(url: string, body?: unknown, options: RequestOptions = {}): Promise<Exchange> {
    return this.request('PUT', url, { ...options, ...(body === undefined ? {} : { body }) });
  }
  delete(url: string, options?: RequestOptions): Promise<Exchange> {
    return this.request('DELETE', url, options);
  }
}

/** An api started for one test file on its own database, listening on 127.0.0.1 with a free port. */
export interface TestApp {
  readonly db: TestDatabase;
  readonly running: RunningHangar;
  readonly baseUrl: string;
  /** Every exchange of every client of this app. */
  readonly exchanges: Exchange[];
  /** An admin key of the `bootstrap` project, and a client using it. */
  readonly adminProjectId: string;
  readonly admin: ApiClient;
  /** A client with the given key (or none). */
  client(token?: string): ApiClient;
  /** Stops the app and drops the database. */
  close(): Promise<void>;
}

/** Options of {@link startTestApp}. */
export interface TestAppOptions {
  /** Environment on top of the test defaults. */
  readonly env?: Record<string, string>;
  /** Test-only modules (controllers exercising the framework). */
  readonly extraModules?: readonly ModuleImport[];
}

/**
 * Starts the api for a test file: a fresh migrated database, config from a real environment
 * (`loadConfig`), role api, HTTP on 127.0.0.1:0, logs silent unless HANGAR_TEST_LOG_LEVEL says
 * otherwise. Cleans up after itself if starting fails.
 */
export async function startTestApp(options: TestAppOptions = {}): Promise<TestApp> {
  const env = options.env ?? {};
  const db = await createTestDatabase();
  let running: RunningHangar | undefined;
  try {
    const config = loadConfig({
      DATABASE_URL: db.url,
      REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
      HANGAR_ROLE: 'api',
      HANGAR_HTTP_HOST: '127.0.0.1',
      HANGAR_HTTP_PORT: '0',
      HANGAR_GRPC_HOST: '127.0.0.1',
      HANGAR_GRPC_PORT: '0',
      HANGAR_GRPC_INSECURE: 'true',
      HANGAR_REDIS_PREFIX: `hangar-test-${randomBytes(4).toString('hex')}`,
      HANGAR_LOG_LEVEL: process.env.HANGAR_TEST_LOG_LEVEL ?? 'silent',
      HANGAR_DATABASE_POOL_MAX: '5',
      ...env,
    });
    running = await startHangar(config, { extraModules: options.extraModules ?? [] });
    const baseUrl = running.url;
    if (!baseUrl) throw new Error('the api did not report its URL');
    const project = await db.prisma.project.create({ data: { name: 'bootstrap' } });
    const adminToken = await createKey(db, project.id, 'admin');
    const exchanges: Exchange[] = [];
    const started = running;
    return {
      db,
      running: started,
      baseUrl,
      exchanges,
      adminProjectId: project.id,
      admin: new ApiClient(baseUrl, adminToken, exchanges),
      client: (token) => new ApiClient(baseUrl, token, exchanges),
      close: async () => {
        // Bounded, so a test that broke the shutdown still drops its database.
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, 20_000);
        });
        await Promise.race([started.close().catch(() => undefined), timeout]);
        clearTimeout(timer);
        await db.drop();
      },
    };
  } catch (error) {
    await running?.close().catch(() => undefined);
    await db.drop();
    throw error;
  }
}

/** Stores a new API key of `role` in `projectId` directly in the database; returns its token. */
export async function createKey(
  db: TestDatabase,
  projectId: string,
  role: ApiKeyRole,
  name: string = role,
): Promise<string> {
  const key = generateApiKey();
  await db.prisma.apiKey.create({
    data: { projectId, role, name, prefix: key.prefix, secretHash: key.secretHash },
  });
  return key.token;
}

/** A project with one key per role. */
export interface TestProject {
  readonly id: string;
  readonly admin: string;
  readonly member: string;
  readonly reader: string;
}

/** Creates a project (directly in the database) with an admin, a member and a reader key. */
export async function createProject(db: TestDatabase, name: string): Promise<TestProject> {
  const project = await db.prisma.project.create({ data: { name } });
  return {
    id: project.id,
    admin: await createKey(db, project.id, 'admin'),
    member: await createKey(db, project.id, 'member'),
    reader: await createKey(db, project.id, 'reader'),
  };
}

/** Asserts an RFC 9457 problem with `status` and `code`; returns its body. */
export function expectProblem(exchange: Exchange, status: number, code: string): Record<string, unknown> {
  const context = `${exchange.method} ${exchange.url} → ${exchange.status} ${JSON.stringify(exchange.body)}`;
  expect(exchange.status, context).toBe(status);
  expect(exchange.contentType, context).toMatch(/^application\/problem\+json/);
  const body = exchange.body as Record<string, unknown>;
  expect(body, context).toMatchObject({ status, code, type: expect.stringMatching(/^urn:hangar:problem:/) });
  expect(typeof body.title).toBe('string');
  expect(typeof body.detail).toBe('string');
  expect(body.instance).toBe(exchange.url.split('?')[0]);
  expect(body.request_id).toBe(exchange.headers.get('x-request-id'));
  return body;
}

/** A JSON body, typed loosely for assertions. */
export function json(exchange: Exchange): Record<string, unknown> {
  return exchange.body as Record<string, unknown>;
}

/** What the validator says about one exchange. */
export interface ExchangeCheck {
  readonly exchange: Exchange;
  /** The documented operation (`GET /v1/flavors/{id}`), undefined when none matches. */
  readonly operation: string | undefined;
  readonly errors: string[];
}

/**
 * Validates real responses against the OpenAPI document with Ajv (JSON Schema 2020-12, the
 * dialect of OpenAPI 3.1): the route must be documented, the status listed for the operation,
 * the media type the documented one, the body valid against its schema and the documented
 * headers present.
 */
export function openApiValidator(document: OpenApiDocument): (exchange: Exchange) => ExchangeCheck {
  const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: true });
  addFormats.default(ajv);
  ajv.addSchema({ ...document, $id: 'hangar-openapi.json' });
  const operations = Object.entries(document.paths).flatMap(([path, item]) =>
    Object.keys(item).map((method) => ({
      method: method.toUpperCase(),
      path,
      pattern: new RegExp(`^${path.replace(/[.]/g, '\\.').replace(/\{[^}]+\}/g, '[^/]+')}$`),
    })),
  );
  const pointer = (parts: string[]): string =>
    parts.map((p) => p.replaceAll('~', '~0').replaceAll('/', '~1')).join('/');
  return (exchange) => {
    const path = exchange.url.split('?')[0] ?? exchange.url;
    const candidates = operations.filter((o) => o.method === exchange.method && o.pattern.test(path));
    // Static segments win over parameters, as in the server's router.
    const op = candidates.sort(
      (a, b) => b.path.replace(/\{[^}]+\}/g, '').length - a.path.replace(/\{[^}]+\}/g, '').length,
    )[0];
    if (!op) return { exchange, operation: undefined, errors: ['no documented operation'] };
    const name = `${op.method} ${op.path}`;
    const operation = document.paths[op.path]?.[op.method.toLowerCase()] as
      | {
          responses: Record<string, { content?: Record<string, unknown>; headers?: Record<string, unknown> }>;
        }
      | undefined;
    const response = operation?.responses[String(exchange.status)];
    if (!response)
      return { exchange, operation: name, errors: [`status ${exchange.status} is not documented`] };
    const errors: string[] = [];
    for (const header of Object.keys(response.headers ?? {})) {
      if (!exchange.headers.has(header)) errors.push(`documented header ${header} is missing`);
    }
    if (!response.content) {
      if (exchange.body !== undefined) errors.push('a body was sent where none is documented');
      return { exchange, operation: name, errors };
    }
    const mediaType = Object.keys(response.content).find((type) => exchange.contentType.startsWith(type));
    if (!mediaType) {
      errors.push(
        `content type ${exchange.contentType} is not one of ${Object.keys(response.content).join(', ')}`,
      );
      return { exchange, operation: name, errors };
    }
    const ref = `hangar-openapi.json#/${pointer(['paths', op.path, op.method.toLowerCase(), 'responses', String(exchange.status), 'content', mediaType, 'schema'])}`;
    const validate = ajv.getSchema(ref) ?? ajv.compile({ $ref: ref });
    if (!validate(exchange.body)) {
      errors.push(
        ...(validate.errors ?? []).map(
          (e) => `${e.instancePath || '(root)'} ${e.message ?? ''} ${JSON.stringify(e.params)}`,
        ),
      );
    }
    return { exchange, operation: name, errors };
  };
}

/** Asserts that every recorded exchange on a documented route conforms to the document. */
export async function expectExchangesConform(app: TestApp): Promise<ExchangeCheck[]> {
  const document = (await app.client().get('/openapi.json')).body as OpenApiDocument;
  const validate = openApiValidator(document);
  const checks = app.exchanges.map(validate);
  const failures = checks
    .filter((c) => c.operation !== undefined && c.errors.length > 0)
    .map((c) => `${c.exchange.method} ${c.exchange.url} → ${c.exchange.status}: ${c.errors.join('; ')}`);
  expect(failures).toEqual([]);
  return checks;
}
