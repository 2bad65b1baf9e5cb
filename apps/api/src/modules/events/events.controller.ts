import type { PassThrough } from 'node:stream';
import { Headers } from '@nestjs/common';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { HttpResult } from '../../common/http/http-result.js';
import { Ctx, isAdmin, type RequestContext } from '../../common/http/request-context.js';
import { ValidQuery } from '../../common/http/request-input.js';
import type { Page } from '../../common/pagination/pagination.js';
import { DomainError } from '../../errors/domain-error.js';
import {
  type EventDto,
  type EventFilter,
  EventIdSchema,
  EventPageSchema,
  EventStreamSchema,
  type ListEventsQuery,
  ListEventsQuerySchema,
  type StreamEventsQuery,
  StreamEventsQuerySchema,
} from './event.schemas.js';
import { EventsService } from './events.service.js';

const NIL_UUID = '00000000-0000-0000-0000-000000000000';

/** The SSE media type (WHATWG HTML, Server-sent events). */
export const EVENT_STREAM_CONTENT_TYPE = 'text/event-stream';

/**
 * The caller's view: members and readers see their own project's events only (a filter naming
 * another project sees nothing), admins every project's and the cluster's (host events).
 * Undefined when the caller can see nothing.
 */
function filterOf(
  ctx: RequestContext,
  query: Pick<ListEventsQuery, 'project_id' | 'resource_type' | 'resource_id' | 'kind'> & { since?: string },
): EventFilter | undefined {
  if (!isAdmin(ctx) && query.project_id !== undefined && query.project_id !== ctx.projectId) return undefined;
  return {
    projectId: isAdmin(ctx) ? query.project_id : ctx.projectId,
    resourceType: query.resource_type,
    resourceId: query.resource_id,
    kind: query.kind,
    since: query.since === undefined ? undefined : new Date(query.since),
  };
}

/**
 * `/v1/events`: what happened to VMs, operations and hosts, as a list and as a Server-Sent Events
 * stream (ADR 0041). Another project's events are never shown.
 */
@Resource({ path: 'events', tag: 'Events', description: 'What happened: a list and a live stream' })
export class EventsController {
  constructor(private readonly events: EventsService) {}

  @Endpoint({
    method: 'GET',
    operationId: 'listEvents',
    summary: 'List events',
    description:
      'Newest first; with `after` (an event id), oldest first from there — the cursor a poller keeps.',
    query: ListEventsQuerySchema,
    response: EventPageSchema,
  })
  async list(@Ctx() ctx: RequestContext, @ValidQuery() query: ListEventsQuery): Promise<Page<EventDto>> {
    const filter = filterOf(ctx, query);
    if (!filter) return { items: [], next_page_token: null };
    return this.events.list(filter, query);
  }

  @Endpoint({
    method: 'GET',
    path: 'stream',
    operationId: 'streamEvents',
    summary: 'Stream events (Server-Sent Events)',
    description:
      'A `text/event-stream` that stays open: one message per event, in id order, with `id:` the ' +
      'event id, `event:` its kind and `data:` the Event as JSON; `: keep-alive` comments while ' +
      'idle. Reconnect with `Last-Event-ID: <last id>` to resume without loss or repeats. The ' +
      'filters are those of the list.',
    query: StreamEventsQuerySchema,
    response: EventStreamSchema,
    produces: EVENT_STREAM_CONTENT_TYPE,
  })
  async stream(
    @Ctx() ctx: RequestContext,
    @ValidQuery() query: StreamEventsQuery,
    @Headers('last-event-id') lastEventId: string | undefined,
  ): Promise<HttpResult<PassThrough>> {
    let after = query.after;
    if (lastEventId !== undefined && lastEventId !== '') {
      if (!EventIdSchema.safeParse(lastEventId.trim()).success) {
        throw DomainError.invalid(
          'Last-Event-ID',
          'header',
          'must be the id of an event',
          'invalid_event_id',
        );
      }
      after = lastEventId.trim();
    }
    // Another project's filter gets a stream that never carries anything (as the list is empty):
    // the nil UUID is no resource's id.
    const filter = filterOf(ctx, query) ?? { projectId: ctx.projectId, resourceId: NIL_UUID };
    const stream = await this.events.open(filter, after === undefined ? undefined : BigInt(after));
    return new HttpResult(stream, {
      headers: {
        'content-type': `${EVENT_STREAM_CONTENT_TYPE}; charset=utf-8`,
        'cache-control': 'no-cache',
        // A stream ends only when the server closes (or the client goes): its connection is
        // not kept for another request, so a closing server does not wait for it to idle out.
        connection: 'close',
        // nginx and friends: pass each message on at once.
        'x-accel-buffering': 'no',
      },
    });
  }
}
