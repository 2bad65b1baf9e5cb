import {
  type DynamicModule,
  type FactoryProvider,
  Global,
  Module,
  type ModuleMetadata,
} from '@nestjs/common';
import { PRISMA_OPTIONS, PrismaService, type PrismaServiceOptions } from './prisma.service.js';

/** Options of {@link PrismaModule.forRootAsync}, resolved from other providers (e.g. the config). */
export interface PrismaModuleAsyncOptions {
  readonly imports?: ModuleMetadata['imports'];
  readonly useFactory: FactoryProvider<PrismaServiceOptions | Promise<PrismaServiceOptions>>['useFactory'];
  readonly inject?: FactoryProvider['inject'];
}

/**
 * Provides one {@link PrismaService} to the whole app (global). `forRoot()` without options
 * connects to DATABASE_URL; `forRoot({url})` or `forRootAsync({useFactory, inject})` elsewhere.
 */
@Global()
@Module({})
// biome-ignore lint/complexity/noStaticOnlyClass: Nest dynamic modules are classes with static factories
export class PrismaModule {
  static forRoot(options?: PrismaServiceOptions): DynamicModule {
    return {
      module: PrismaModule,
      providers: [...(options ? [{ provide: PRISMA_OPTIONS, useValue: options }] : []), PrismaService],
      exports: [PrismaService],
    };
  }

  static forRootAsync(options: PrismaModuleAsyncOptions): DynamicModule {
    return {
      module: PrismaModule,
      imports: options.imports ?? [],
      providers: [
        { provide: PRISMA_OPTIONS, useFactory: options.useFactory, inject: options.inject ?? [] },
        PrismaService,
      ],
      exports: [PrismaService],
    };
  }
}
