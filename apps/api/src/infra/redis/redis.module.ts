import {
  type DynamicModule,
  type FactoryProvider,
  Global,
  Module,
  type ModuleMetadata,
} from '@nestjs/common';
import { REDIS_OPTIONS, type RedisOptions, RedisService } from './redis.service.js';

/** Options of {@link RedisModule.forRootAsync}, resolved from other providers (e.g. the config). */
export interface RedisModuleAsyncOptions {
  readonly imports?: ModuleMetadata['imports'];
  readonly useFactory: FactoryProvider<RedisOptions | Promise<RedisOptions>>['useFactory'];
  readonly inject?: FactoryProvider['inject'];
}

/** Provides one {@link RedisService} to the whole app (global). */
@Global()
@Module({})
// biome-ignore lint/complexity/noStaticOnlyClass: Nest dynamic modules are classes with static factories
export class RedisModule {
  static forRoot(options: RedisOptions): DynamicModule {
    return {
      module: RedisModule,
      providers: [{ provide: REDIS_OPTIONS, useValue: options }, RedisService],
      exports: [RedisService],
    };
  }

  static forRootAsync(options: RedisModuleAsyncOptions): DynamicModule {
    return {
      module: RedisModule,
      imports: options.imports ?? [],
      providers: [
        { provide: REDIS_OPTIONS, useFactory: options.useFactory, inject: options.inject ?? [] },
        RedisService,
      ],
      exports: [RedisService],
    };
  }
}
