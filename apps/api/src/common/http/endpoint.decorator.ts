import {
  applyDecorators,
  Controller,
  Delete,
  Get,
  HttpCode,
  Patch,
  Post,
  Put,
  SetMetadata,
} from '@nestjs/common';
import type { z } from 'zod';
import type { ErrorCode } from '../../errors/error-codes.js';

/** HTTP methods an endpoint may have. */
export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** The version prefix of every resource route. */
export const API_PREFIX = '/v1';

/** Response headers an endpoint documents. */
export type DocumentedHeader = 'ETag' | 'Location' | 'Retry-After';

/**
 * Everything about one HTTP endpoint: its route, what it accepts and what it answers. The same
 * object drives the request validation ({@link InputValidationInterceptor}), the idempotency and
 * conditional-request conventions and the OpenAPI document, so docs and behaviour cannot drift.
 */
export interface EndpointSpec {
  readonly method: HttpMethod;
  /** Below the resource's path, Nest syntax (`':id/cordon'`); omitted for the resource itself. */
  readonly path?: string;
  /** Unique, camelCase (`createFlavor`): the name generated clients give the call. */
  readonly operationId: string;
  readonly summary: string;
  readonly description?: string;
  /** Path parameters: a strict object whose keys are the `:names` of the path. */
  readonly params?: z.ZodObject;
  /** Query parameters: a strict object (unknown parameters are a 400). */
  readonly query?: z.ZodObject;
  /** JSON request body (use strict objects: unknown fields are a 400). No body is accepted without it. */
  readonly body?: z.ZodType;
  /** Success status; default 200, 201 for POST, 204 for DELETE. */
  readonly status?: number;
  /** Success body (output side of the schema); none for 204. */
  readonly response?: z.ZodType;
  /** Media type of the success body (default application/json). */
  readonly produces?: string;
  /** Headers the success response carries. */
  readonly headers?: readonly DocumentedHeader[];
  /** Error codes this endpoint can answer beyond those implied by its shape (auth, validation, 404 of ids, …). */
  readonly errors?: readonly ErrorCode[];
  /** Honours `If-Match` (412 on mismatch). Default: PUT, PATCH and DELETE on a resource with path parameters. */
  readonly conditional?: boolean;
  /** Honours `Idempotency-Key`. Default: every POST. */
  readonly idempotent?: boolean;
}

/** An {@link EndpointSpec} with its defaults applied and the route resolved. */
export interface ResolvedEndpoint extends EndpointSpec {
  readonly status: number;
  readonly conditional: boolean;
  readonly idempotent: boolean;
  /** The full route in OpenAPI syntax: `/v1/hosts/{id}/cordon`. */
  readonly route: string;
  readonly resource: ResourceSpec;
}

/** What `@Resource()` knows about a controller. */
export interface ResourceSpec {
  /** Below `/v1` unless `unversioned` (`'flavors'`, `'projects/:id/quota'`). */
  readonly path: string;
  /** OpenAPI tag grouping the resource's endpoints. */
  readonly tag: string;
  readonly description?: string;
  /** Served at the root, not below `/v1` (`/openapi.json`, `/healthz`). */
  readonly unversioned?: boolean;
}

const ENDPOINT_KEY = Symbol('hangar:endpoint');
const RESOURCE_KEY = Symbol('hangar:resource');

const METHOD_DECORATORS = { GET: Get, POST: Post, PUT: Put, PATCH: Patch, DELETE: Delete } as const;

/**
 * Declares a controller of a resource: `@Resource({path: 'flavors', tag: 'Flavors'})` serves it at
 * `/v1/flavors`. Use it instead of `@Controller()`: the version prefix and the OpenAPI tag come
 * from here.
 */
export function Resource(spec: ResourceSpec): ClassDecorator {
  const prefix = spec.unversioned ? '' : API_PREFIX.slice(1);
  const path = [prefix, trimSlashes(spec.path)].filter((p) => p.length > 0).join('/');
  return applyDecorators(Controller(path), SetMetadata(RESOURCE_KEY, spec));
}

/**
 * Declares a route handler with everything the framework needs: its Nest route, its success
 * status, its input schemas (validated before the handler runs; read them with `@ValidBody()`,
 * `@ValidQuery()`, `@ValidParams()`) and its documented responses.
 */
export function Endpoint(spec: EndpointSpec): MethodDecorator {
  checkParams(spec);
  return applyDecorators(
    METHOD_DECORATORS[spec.method](spec.path ?? ''),
    HttpCode(defaultStatus(spec)),
    SetMetadata(ENDPOINT_KEY, spec),
  );
}

/** The endpoint declared on a handler, with defaults applied; undefined for plain Nest handlers. */
export function endpointOf(controller: object, handler: object): ResolvedEndpoint | undefined {
  const cached = resolvedCache.get(handler);
  if (cached) return cached;
  const spec = Reflect.getMetadata(ENDPOINT_KEY, handler) as EndpointSpec | undefined;
  if (!spec) return undefined;
  const resource = resourceOf(controller);
  const controllerName = String((controller as { name?: unknown }).name);
  if (!resource)
    throw new Error(`${controllerName} declares @Endpoint ${spec.operationId} but is not a @Resource`);
  const inResourcePath = [...resource.path.matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1] ?? '');
  const undeclared = inResourcePath.filter((name) => !spec.params || !(name in spec.params.shape));
  if (undeclared.length > 0) {
    throw new Error(
      `@Endpoint ${spec.operationId}: path parameter(s) ${undeclared.join(', ')} missing from params`,
    );
  }
  const hasPathParams = (spec.path ?? '').includes(':') || inResourcePath.length > 0;
  const resolved: ResolvedEndpoint = {
    ...spec,
    status: defaultStatus(spec),
    conditional: spec.conditional ?? (hasPathParams && ['PUT', 'PATCH', 'DELETE'].includes(spec.method)),
    idempotent: spec.idempotent ?? spec.method === 'POST',
    route: openApiRoute(resource, spec.path ?? ''),
    resource,
  };
  resolvedCache.set(handler, resolved);
  return resolved;
}

/** The `@Resource()` of a controller class. */
export function resourceOf(controller: object): ResourceSpec | undefined {
  return Reflect.getMetadata(RESOURCE_KEY, controller) as ResourceSpec | undefined;
}

const resolvedCache = new WeakMap<object, ResolvedEndpoint>();

function defaultStatus(spec: EndpointSpec): number {
  if (spec.status !== undefined) return spec.status;
  if (spec.method === 'POST') return 201;
  if (spec.method === 'DELETE') return 204;
  return 200;
}

function trimSlashes(path: string): string {
  return path.replace(/^\/+|\/+$/g, '');
}

/** `/v1` + resource + endpoint path, `:name` → `{name}`. */
function openApiRoute(resource: ResourceSpec, path: string): string {
  const parts = [
    resource.unversioned ? '' : API_PREFIX.slice(1),
    trimSlashes(resource.path),
    trimSlashes(path),
  ];
  const joined = `/${parts.filter((p) => p.length > 0).join('/')}`;
  return joined.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
}

/** The endpoint's own path parameters and its `params` schema must name the same keys. */
function checkParams(spec: EndpointSpec): void {
  const inPath = [...(spec.path ?? '').matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1]);
  const declared = spec.params ? Object.keys(spec.params.shape) : [];
  const missing = inPath.filter((name) => name !== undefined && !declared.includes(name));
  if (missing.length > 0) {
    throw new Error(
      `@Endpoint ${spec.operationId}: path parameter(s) ${missing.join(', ')} missing from params`,
    );
  }
}
