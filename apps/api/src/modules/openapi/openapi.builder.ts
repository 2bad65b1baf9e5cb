import { isDeepStrictEqual } from 'node:util';
import { z } from 'zod';
import type { ResolvedEndpoint } from '../../common/http/endpoint.decorator.js';
import { ERROR_TABLE, type ErrorCode } from '../../errors/error-codes.js';
import { PROBLEM_CONTENT_TYPE, ProblemSchema } from '../../errors/problem.js';
import type { ApiKeyRole } from '../../gen/prisma/enums.js';

/** A JSON Schema / OpenAPI object (plain JSON). */
export type JsonObject = { [key: string]: unknown };

/** An OpenAPI 3.1 document. */
export interface OpenApiDocument extends JsonObject {
  readonly openapi: '3.1.0';
  readonly info: JsonObject;
  readonly paths: Record<string, Record<string, JsonObject>>;
  readonly components: { readonly schemas: Record<string, JsonObject> } & JsonObject;
}

/** An endpoint with what the access decorators say about it. */
export interface DocumentedEndpoint {
  readonly endpoint: ResolvedEndpoint;
  readonly isPublic: boolean;
  /** Roles the route requires; undefined: every role. */
  readonly roles: readonly ApiKeyRole[] | undefined;
}

/** Resource descriptions, by tag. */
export interface TagInfo {
  readonly name: string;
  readonly description?: string | undefined;
}

const SCHEMA_REF = '#/components/schemas/';
const ref = (id: string): JsonObject => ({ $ref: `${SCHEMA_REF}${id}` });

/**
 * Builds the OpenAPI 3.1 document from the endpoints' own zod schemas (`z.toJSONSchema`, JSON
 * Schema 2020-12, which OpenAPI 3.1 uses as is): request bodies from their input side, responses
 * from their output side, schemas with a `.meta({id})` as named components. Nothing here is
 * written by hand per endpoint, so the document cannot drift from what the api validates.
 */
export function buildOpenApiDocument(
  endpoints: readonly DocumentedEndpoint[],
  info: { readonly title: string; readonly version: string; readonly description: string },
  tags: readonly TagInfo[],
): OpenApiDocument {
  checkUnique(endpoints);
  const requestRoots = new Map<z.ZodType, string>();
  const responseRoots = new Map<z.ZodType, string>([[ProblemSchema, 'Problem']]);
  for (const { endpoint } of endpoints) {
    if (endpoint.body)
      requestRoots.set(endpoint.body, idOf(endpoint.body) ?? `${pascal(endpoint.operationId)}Request`);
    if (endpoint.response) {
      responseRoots.set(
        endpoint.response,
        idOf(endpoint.response) ?? `${pascal(endpoint.operationId)}Response`,
      );
    }
  }
  const schemas = mergeComponents(components(responseRoots, 'output'), components(requestRoots, 'input'));

  const paths: Record<string, Record<string, JsonObject>> = {};
  for (const documented of [...endpoints].sort((a, b) => a.endpoint.route.localeCompare(b.endpoint.route))) {
    const { endpoint } = documented;
    const item = paths[endpoint.route] ?? {};
    paths[endpoint.route] = item;
    item[endpoint.method.toLowerCase()] = operationOf(
      documented,
      requestRoots,
      responseRoots,
      schemas.renamed,
    );
  }

  return {
    openapi: '3.1.0',
    jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema',
    info: { title: info.title, version: info.version, description: info.description },
    tags: tags.map((t) => (t.description ? { name: t.name, description: t.description } : { name: t.name })),
    security: [{ apiKey: [] }],
    paths,
    components: {
      schemas: schemas.components,
      securitySchemes: {
        apiKey: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'hgr_<prefix>_<secret>',
          description: 'An API key of a project, with role admin, member or reader.',
        },
      },
    },
  };
}

function idOf(schema: z.ZodType): string | undefined {
  const meta = z.globalRegistry.get(schema);
  return typeof meta?.id === 'string' ? meta.id : undefined;
}

function pascal(name: string): string {
  return name.charAt(0).toUpperCase() + name.slice(1);
}

function checkUnique(endpoints: readonly DocumentedEndpoint[]): void {
  const operationIds = new Set<string>();
  const routes = new Set<string>();
  for (const { endpoint } of endpoints) {
    if (operationIds.has(endpoint.operationId))
      throw new Error(`duplicate operationId ${endpoint.operationId}`);
    operationIds.add(endpoint.operationId);
    const route = `${endpoint.method} ${endpoint.route}`;
    if (routes.has(route)) throw new Error(`duplicate endpoint ${route}`);
    routes.add(route);
  }
}

/**
 * Generates the named components reachable from `roots` for one side (input/output). Every
 * schema registered with an id anywhere is offered to the generator, so nested named schemas
 * become `$ref`s; what no root reaches is dropped afterwards.
 */
function components(
  roots: ReadonlyMap<z.ZodType, string>,
  io: 'input' | 'output',
): Record<string, JsonObject> {
  const registry = z.registry<{ id: string }>();
  const taken = new Set<string>();
  for (const [schema, id] of roots) {
    registry.add(schema, { id });
    taken.add(id);
  }
  for (const [id, schema] of z.globalRegistry._idmap) {
    if (!taken.has(id) && !registry.has(schema)) {
      registry.add(schema, { id });
      taken.add(id);
    }
  }
  const generated = z.toJSONSchema(registry, {
    io,
    unrepresentable: 'any',
    uri: (id) => `${SCHEMA_REF}${id}`,
  }).schemas;
  const all: Record<string, JsonObject> = {};
  for (const [id, schema] of Object.entries(generated)) {
    const { $schema: _s, $id: _i, ...rest } = schema as JsonObject;
    all[id] = rest;
  }
  const reachable = new Set<string>();
  const visit = (id: string): void => {
    if (reachable.has(id) || !all[id]) return;
    reachable.add(id);
    for (const target of refsIn(all[id])) visit(target);
  };
  for (const id of roots.values()) visit(id);
  return Object.fromEntries(Object.entries(all).filter(([id]) => reachable.has(id)));
}

function refsIn(value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) {
    for (const v of value) refsIn(v, out);
  } else if (value !== null && typeof value === 'object') {
    for (const [key, v] of Object.entries(value)) {
      if (key === '$ref' && typeof v === 'string' && v.startsWith(SCHEMA_REF))
        out.push(v.slice(SCHEMA_REF.length));
      else refsIn(v, out);
    }
  }
  return out;
}

function rewriteRefs(value: unknown, renamed: ReadonlyMap<string, string>): unknown {
  if (Array.isArray(value)) return value.map((v) => rewriteRefs(v, renamed));
  if (value !== null && typeof value === 'object') {
    const out: JsonObject = {};
    for (const [key, v] of Object.entries(value)) {
      if (key === '$ref' && typeof v === 'string' && v.startsWith(SCHEMA_REF)) {
        const target = v.slice(SCHEMA_REF.length);
        out[key] = `${SCHEMA_REF}${renamed.get(target) ?? target}`;
      } else {
        out[key] = rewriteRefs(v, renamed);
      }
    }
    return out;
  }
  return value;
}

/**
 * Output and input components in one namespace. A schema whose two sides differ (a default makes
 * a field optional on input, required on output) keeps its name for the output and gets
 * `<name>Input` for the input.
 */
function mergeComponents(
  output: Record<string, JsonObject>,
  input: Record<string, JsonObject>,
): { components: Record<string, JsonObject>; renamed: Map<string, string> } {
  const renamed = new Map<string, string>();
  for (const [id, schema] of Object.entries(input)) {
    if (output[id] && !isDeepStrictEqual(output[id], schema)) renamed.set(id, `${id}Input`);
  }
  const merged: Record<string, JsonObject> = { ...output };
  for (const [id, schema] of Object.entries(input)) {
    const name = renamed.get(id) ?? id;
    if (!merged[name]) merged[name] = rewriteRefs(schema, renamed) as JsonObject;
  }
  const sorted = Object.fromEntries(Object.entries(merged).sort(([a], [b]) => a.localeCompare(b)));
  return { components: sorted, renamed };
}

function parametersOf(schema: z.ZodObject | undefined, location: 'path' | 'query'): JsonObject[] {
  if (!schema) return [];
  const json = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as JsonObject;
  const properties = (json.properties ?? {}) as Record<string, JsonObject>;
  const required = new Set((json.required ?? []) as string[]);
  return Object.entries(properties).map(([name, property]) => {
    const { description, ...rest } = property;
    return {
      name,
      in: location,
      required: location === 'path' || required.has(name),
      ...(typeof description === 'string' ? { description } : {}),
      schema: rest,
    };
  });
}

const HEADER_DOCS: Record<string, JsonObject> = {
  ETag: { description: 'Entity tag of the resource; send it back in If-Match', schema: { type: 'string' } },
  Location: {
    description: 'Where the created resource, or the operation of an action, is',
    schema: { type: 'string' },
  },
  'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'string' } },
};

/** The problem codes an endpoint can answer, from its shape and its declared `errors`. */
export function problemCodesOf(documented: DocumentedEndpoint): ErrorCode[] {
  const { endpoint, isPublic, roles } = documented;
  const codes = new Set<ErrorCode>(['INTERNAL', 'SERVICE_UNAVAILABLE']);
  const takesBody = endpoint.method !== 'GET';
  if (!isPublic) {
    codes.add('UNAUTHENTICATED');
    if (roles || endpoint.method !== 'GET') codes.add('FORBIDDEN');
  }
  if (endpoint.params || endpoint.query || takesBody || endpoint.idempotent || endpoint.conditional) {
    codes.add('VALIDATION_FAILED');
  }
  if (takesBody) {
    codes.add('MALFORMED_REQUEST');
    codes.add('PAYLOAD_TOO_LARGE');
    codes.add('UNSUPPORTED_MEDIA_TYPE');
  }
  if (endpoint.params) codes.add('NOT_FOUND');
  if (endpoint.conditional) codes.add('PRECONDITION_FAILED');
  if (endpoint.idempotent) {
    codes.add('IDEMPOTENCY_KEY_REUSED');
    codes.add('IDEMPOTENCY_IN_FLIGHT');
  }
  for (const code of endpoint.errors ?? []) codes.add(code);
  return [...codes];
}

function operationOf(
  documented: DocumentedEndpoint,
  requestRoots: ReadonlyMap<z.ZodType, string>,
  responseRoots: ReadonlyMap<z.ZodType, string>,
  renamed: ReadonlyMap<string, string>,
): JsonObject {
  const { endpoint, isPublic, roles } = documented;
  const parameters: JsonObject[] = [
    ...parametersOf(endpoint.params, 'path'),
    ...parametersOf(endpoint.query, 'query'),
  ];
  if (endpoint.idempotent) {
    parameters.push({
      name: 'Idempotency-Key',
      in: 'header',
      required: false,
      description:
        'Makes the request safe to retry: the same key and request replay the first response; ' +
        'the same key with another request is a 422; while the first runs, a 409.',
      schema: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[\\x21-\\x7e]+$' },
    });
  }
  if (endpoint.conditional) {
    parameters.push({
      name: 'If-Match',
      in: 'header',
      required: false,
      description: 'Only if the resource still has this ETag (412 otherwise); `*` matches any.',
      schema: { type: 'string', maxLength: 4096 },
    });
  }

  const responses: Record<string, JsonObject> = {};
  const success: JsonObject = { description: endpoint.summary };
  if (endpoint.headers && endpoint.headers.length > 0) {
    success.headers = Object.fromEntries(endpoint.headers.map((h) => [h, HEADER_DOCS[h]]));
  }
  if (endpoint.response) {
    const id = responseRoots.get(endpoint.response);
    success.content = { [endpoint.produces ?? 'application/json']: { schema: id ? ref(id) : {} } };
  }
  responses[String(endpoint.status)] = success;
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of problemCodesOf(documented)) {
    const status = ERROR_TABLE[code].http;
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  for (const [status, codes] of [...byStatus].sort(([a], [b]) => a - b)) {
    responses[String(status)] = {
      description: `Problem: ${codes.join(', ')}`,
      content: { [PROBLEM_CONTENT_TYPE]: { schema: ref('Problem') } },
    };
  }

  const access = isPublic
    ? 'No API key needed.'
    : roles
      ? `Requires a key with role ${roles.join(' or ')}.`
      : undefined;
  const description = [endpoint.description, access].filter((d) => d !== undefined).join('\n\n');
  const bodyId = endpoint.body ? requestRoots.get(endpoint.body) : undefined;
  return {
    operationId: endpoint.operationId,
    summary: endpoint.summary,
    ...(description ? { description } : {}),
    tags: [endpoint.resource.tag],
    ...(isPublic ? { security: [] } : {}),
    ...(roles ? { 'x-hangar-roles': [...roles] } : {}),
    ...(parameters.length > 0 ? { parameters } : {}),
    ...(bodyId
      ? {
          requestBody: {
            required: true,
            content: { 'application/json': { schema: ref(renamed.get(bodyId) ?? bodyId) } },
          },
        }
      : {}),
    responses,
  };
}
