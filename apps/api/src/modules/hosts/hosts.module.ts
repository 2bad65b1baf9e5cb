import { Module } from '@nestjs/common';
import { HostsController } from './hosts.controller.js';
import { HostsService } from './hosts.service.js';
import { JoinTokensController } from './join-tokens.controller.js';
import { JoinTokensService } from './join-tokens.service.js';

/** Hosts (operator view) and join tokens. */
@Module({
  controllers: [HostsController, JoinTokensController],
  providers: [HostsService, JoinTokensService],
  exports: [HostsService, JoinTokensService],
})
export class HostsModule {}
