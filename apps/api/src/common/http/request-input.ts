import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import type { z } from 'zod';
import { DomainError, type FieldError, type FieldLocation } from '../../errors/domain-error.js';
import type { ResolvedEndpoint } from './endpoint.decorator.js';

/** The validated (parsed, defaulted) input of a request. */
export interface RequestInput {
  readonly params: unknown;
  readonly query: unknown;
  readonly body: unknown;
}

const INPUT = Symbol('hangar:input');
type WithInput = FastifyRequest & { [INPUT]?: RequestInput };

/**
 * Validates a request against its endpoint: path parameters, query and body each through their
 * zod schema, all issues reported at once as one VALIDATION_FAILED problem. What the endpoint does
 * not declare must be absent: query parameters without a `query` schema and a body without a
 * `body` schema are rejected too (an empty JSON object is tolerated as "no body").
 *
 * @throws DomainError VALIDATION_FAILED
 */
export function validateRequestInput(endpoint: ResolvedEndpoint, request: FastifyRequest): RequestInput {
  const errors: FieldError[] = [];
  const params = parsePart(endpoint.params, request.params ?? {}, 'path', errors);
  const query = parsePart(endpoint.query, request.query ?? {}, 'query', errors);
  let body: unknown;
  if (endpoint.body) {
    body = parsePart(endpoint.body, request.body, 'body', errors);
  } else if (!isEmptyBody(request.body)) {
    errors.push({
      field: '(root)',
      in: 'body',
      reason: 'unexpected_body',
      message: 'this endpoint takes no request body',
    });
  }
  if (errors.length > 0) throw validationError(errors);
  const input = { params, query, body };
  (request as WithInput)[INPUT] = input;
  return input;
}

/** Builds the VALIDATION_FAILED problem of a list of field errors. */
export function validationError(errors: readonly FieldError[]): DomainError {
  const first = errors[0];
  const summary = first ? `${first.in} ${first.field}: ${first.message}` : 'the request is not valid';
  const more = errors.length > 1 ? ` (and ${errors.length - 1} more)` : '';
  return new DomainError('VALIDATION_FAILED', `Invalid request: ${summary}${more}.`, { errors });
}

/** Turns zod issues into field errors located in `location`. */
export function fieldErrorsOf(issues: readonly z.core.$ZodIssue[], location: FieldLocation): FieldError[] {
  const out: FieldError[] = [];
  for (const issue of issues) {
    const base = issue.path.map(String);
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        out.push({
          field: [...base, key].join('.'),
          in: location,
          reason: issue.code,
          message: `unknown field "${key}"`,
        });
      }
      continue;
    }
    out.push({
      field: base.length > 0 ? base.join('.') : '(root)',
      in: location,
      reason: issue.code,
      message: issue.message,
    });
  }
  return out;
}

function parsePart(
  schema: z.ZodType | undefined,
  value: unknown,
  location: FieldLocation,
  errors: FieldError[],
): unknown {
  if (!schema) {
    // Undeclared parameters are errors too: a typo in a filter must not silently list everything.
    if (location === 'query' && value !== null && typeof value === 'object') {
      for (const key of Object.keys(value)) {
        errors.push({
          field: key,
          in: location,
          reason: 'unrecognized_keys',
          message: `unknown query parameter "${key}"`,
        });
      }
    }
    return {};
  }
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  errors.push(...fieldErrorsOf(result.error.issues, location));
  return undefined;
}

function isEmptyBody(body: unknown): boolean {
  if (body === undefined || body === null) return true;
  return typeof body === 'object' && !Array.isArray(body) && Object.keys(body).length === 0;
}

function inputOf(context: ExecutionContext): RequestInput {
  const request = context.switchToHttp().getRequest<WithInput>();
  const input = request[INPUT];
  if (!input) {
    throw new Error(
      `${context.getClass().name}.${context.getHandler().name} reads validated input but has no @Endpoint`,
    );
  }
  return input;
}

/** The validated body of an `@Endpoint` (its `body` schema's output). */
export const ValidBody = createParamDecorator(
  (_data: unknown, context: ExecutionContext) => inputOf(context).body,
);

/** The validated query of an `@Endpoint` (its `query` schema's output). */
export const ValidQuery = createParamDecorator(
  (_data: unknown, context: ExecutionContext) => inputOf(context).query,
);

/** The validated path parameters of an `@Endpoint` (its `params` schema's output). */
export const ValidParams = createParamDecorator(
  (_data: unknown, context: ExecutionContext) => inputOf(context).params,
);
