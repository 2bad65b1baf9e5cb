import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import { DomainError } from '../../errors/domain-error.js';
import { canonicalHash } from '../util/canonical-json.js';

/**
 * The entity tag of a representation's writable state, for rows without a version column:
 * 20 hex digits of the SHA-256 of `state` (canonical JSON). Equal state, equal tag; any change of
 * `state`, another tag. See docs/adr/0024 for what each resource puts in `state`.
 */
export function contentEtag(state: unknown): string {
  return canonicalHash(state).slice(0, 20);
}

/** The entity tag of a row with a `version` column (VMs): the version itself, `"7"`. */
export function versionEtag(version: number): string {
  return String(version);
}

/** A parsed `If-Match` header: `*` or a list of entity tags (without quotes). */
export type IfMatchCondition =
  | { readonly any: true }
  | { readonly any: false; readonly tags: readonly string[] };

const ENTITY_TAG = /^(W\/)?"([\x21\x23-\x7e]*)"$|^([\x21\x23-\x7e]+)$/;

/**
 * Parses `If-Match` (RFC 9110 §13.1.1). Weak tags (`W/"…"`) never match: If-Match uses the strong
 * comparison. Unquoted tags are accepted as a convenience (the bodies carry tags without quotes).
 *
 * @returns undefined when the header is absent
 * @throws DomainError VALIDATION_FAILED when the header is not a list of entity tags
 */
export function parseIfMatch(header: string | string[] | undefined): IfMatchCondition | undefined {
  if (header === undefined) return undefined;
  const value = (Array.isArray(header) ? header.join(',') : header).trim();
  if (value === '*') return { any: true };
  const tags: string[] = [];
  for (const part of value.split(',')) {
    const match = ENTITY_TAG.exec(part.trim());
    if (!match || value.length > 4096) {
      throw DomainError.invalid(
        'If-Match',
        'header',
        'must be "*" or a list of entity tags ("…")',
        'invalid_header',
      );
    }
    if (match[1]) continue; // weak: can never match strongly
    tags.push(match[2] ?? match[3] ?? '');
  }
  return { any: false, tags };
}

/** Whether `condition` allows writing a resource whose current tag is `current`. */
export function ifMatchSatisfied(condition: IfMatchCondition | undefined, current: string): boolean {
  if (!condition || condition.any) return true;
  return condition.tags.includes(current);
}

/**
 * Throws 412 PRECONDITION_FAILED unless `condition` allows writing the resource at `current`.
 * The problem carries `current_etag` so a client can re-read and decide.
 */
export function assertIfMatch(condition: IfMatchCondition | undefined, current: string): void {
  if (!ifMatchSatisfied(condition, current)) throw preconditionFailed(current);
}

/** The 412 of a resource that changed since the client read it. */
export function preconditionFailed(current: string | undefined): DomainError {
  return new DomainError(
    'PRECONDITION_FAILED',
    'The resource changed since it was read (If-Match does not match its current ETag); read it again.',
    current === undefined ? {} : { extensions: { current_etag: current }, headers: { ETag: `"${current}"` } },
  );
}

/**
 * For versioned rows (VMs): the version `If-Match` expects, for a compare-and-set UPDATE
 * (`updateVm(tx, id, expectedVersionOf(ifMatch), …)`). undefined when any version will do.
 *
 * @throws DomainError PRECONDITION_FAILED when the tag is not a version (it cannot match)
 * @throws DomainError VALIDATION_FAILED for a list of tags: one compare-and-set checks one version
 */
export function expectedVersionOf(condition: IfMatchCondition | undefined): number | undefined {
  if (!condition || condition.any) return undefined;
  if (condition.tags.length > 1) {
    throw DomainError.invalid('If-Match', 'header', 'takes a single entity tag here', 'invalid_header');
  }
  const tag = condition.tags[0];
  if (tag === undefined || !/^[1-9][0-9]{0,9}$/.test(tag)) throw preconditionFailed(undefined);
  return Number(tag);
}

/** The request's parsed `If-Match` header (undefined when absent); malformed headers are a 400. */
export const IfMatch = createParamDecorator((_data: unknown, context: ExecutionContext) =>
  parseIfMatch(context.switchToHttp().getRequest<FastifyRequest>().headers['if-match']),
);
