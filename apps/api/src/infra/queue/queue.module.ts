import {
  type DynamicModule,
  type FactoryProvider,
  Global,
  Module,
  type ModuleMetadata,
} from '@nestjs/common';
import { OPERATION_QUEUE_OPTIONS, OperationQueue, type OperationQueueOptions } from './operation-queue.js';

/** Options of {@link QueueModule.forRootAsync}. */
export interface QueueModuleAsyncOptions {
  readonly imports?: ModuleMetadata['imports'];
  readonly useFactory: FactoryProvider<OperationQueueOptions | Promise<OperationQueueOptions>>['useFactory'];
  readonly inject?: FactoryProvider['inject'];
}

/** Provides the {@link OperationQueue} producer (global). Needs the global RedisModule. */
@Global()
@Module({})
// biome-ignore lint/complexity/noStaticOnlyClass: Nest dynamic modules are classes with static factories
export class QueueModule {
  static forRoot(options: OperationQueueOptions = {}): DynamicModule {
    return {
      module: QueueModule,
      providers: [{ provide: OPERATION_QUEUE_OPTIONS, useValue: options }, OperationQueue],
      exports: [OperationQueue],
    };
  }

  static forRootAsync(options: QueueModuleAsyncOptions): DynamicModule {
    return {
      module: QueueModule,
      imports: options.imports ?? [],
      providers: [
        { provide: OPERATION_QUEUE_OPTIONS, useFactory: options.useFactory, inject: options.inject ?? [] },
        OperationQueue,
      ],
      exports: [OperationQueue],
    };
  }
}
