import { Module } from '@nestjs/common';
import { PlacementService } from './placement.service.js';

/** Placement: filters, weighers and the race-free allocation claim. Needs the global PrismaModule. */
@Module({ providers: [PlacementService], exports: [PlacementService] })
export class PlacementModule {}
