import {
  type DynamicModule,
  type FactoryProvider,
  Global,
  Module,
  type ModuleMetadata,
} from '@nestjs/common';
import { AGENT_CLIENT_OPTIONS, type AgentClientOptions, AgentClientPool } from './agent-client.pool.js';

/** Options of {@link AgentClientModule.forRootAsync}. */
export interface AgentClientModuleAsyncOptions {
  readonly imports?: ModuleMetadata['imports'];
  readonly useFactory: FactoryProvider<AgentClientOptions | Promise<AgentClientOptions>>['useFactory'];
  readonly inject?: FactoryProvider['inject'];
}

/** Provides the {@link AgentClientPool} (global): every service that commands agents shares it. */
@Global()
@Module({})
// biome-ignore lint/complexity/noStaticOnlyClass: Nest dynamic modules are classes with static factories
export class AgentClientModule {
  static forRoot(options: AgentClientOptions = {}): DynamicModule {
    return {
      module: AgentClientModule,
      providers: [{ provide: AGENT_CLIENT_OPTIONS, useValue: options }, AgentClientPool],
      exports: [AgentClientPool],
    };
  }

  static forRootAsync(options: AgentClientModuleAsyncOptions): DynamicModule {
    return {
      module: AgentClientModule,
      imports: options.imports ?? [],
      providers: [
        { provide: AGENT_CLIENT_OPTIONS, useFactory: options.useFactory, inject: options.inject ?? [] },
        AgentClientPool,
      ],
      exports: [AgentClientPool],
    };
  }
}
