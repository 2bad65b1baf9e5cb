import { Module } from '@nestjs/common';
import { EventFeed } from './event-feed.js';
import { EventsController } from './events.controller.js';
import { EventsService } from './events.service.js';
import { EVENTS_SETTINGS, loadEventsSettings } from './events.settings.js';

/**
 * `/v1/events` (list and SSE stream) and the event feed behind the stream (role api). Needs the
 * global PrismaModule; its settings come from the environment (tests override EVENTS_SETTINGS).
 */
@Module({
  controllers: [EventsController],
  providers: [{ provide: EVENTS_SETTINGS, useFactory: () => loadEventsSettings() }, EventFeed, EventsService],
  exports: [EventFeed, EventsService],
})
export class EventsModule {}
