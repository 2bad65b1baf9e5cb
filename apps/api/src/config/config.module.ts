import { type DynamicModule, Global, Inject, Module } from '@nestjs/common';
import type { HangarConfig } from './hangar-config.js';

/** Injection token of the validated {@link HangarConfig}. */
export const HANGAR_CONFIG = Symbol('HANGAR_CONFIG');

/** Injects the validated configuration: `constructor(@InjectConfig() config: HangarConfig)`. */
export const InjectConfig = (): ParameterDecorator => Inject(HANGAR_CONFIG);

/**
 * Provides the configuration to the whole app. It is loaded before Nest starts (main.ts), so a
 * bad environment stops the process with every problem listed, before any connection is opened.
 */
@Global()
@Module({})
// biome-ignore lint/complexity/noStaticOnlyClass: Nest dynamic modules are classes with static factories
export class ConfigModule {
  static forRoot(config: HangarConfig): DynamicModule {
    return {
      module: ConfigModule,
      providers: [{ provide: HANGAR_CONFIG, useValue: config }],
      exports: [HANGAR_CONFIG],
    };
  }
}
