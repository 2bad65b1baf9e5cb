import { Module } from '@nestjs/common';
import { FlavorsController } from './flavors.controller.js';
import { FlavorsService } from './flavors.service.js';

/** Flavors (VM sizes). */
@Module({ controllers: [FlavorsController], providers: [FlavorsService], exports: [FlavorsService] })
export class FlavorsModule {}
