import { type DynamicModule, Module, type ModuleMetadata } from '@nestjs/common';
import { CommonModule } from './common/common.module.js';
import { ConfigModule } from './config/config.module.js';
import type { HangarConfig, HangarRole } from './config/hangar-config.js';
import { PrismaModule } from './infra/prisma/prisma.module.js';
import { ApiKeysModule } from './modules/api-keys/api-keys.module.js';
import { AuthModule } from './modules/auth/auth.module.js';
import { ConductorModule } from './modules/conductor/conductor.module.js';
import { EventsModule } from './modules/events/events.module.js';
import { FlavorsModule } from './modules/flavors/flavors.module.js';
import { HostsModule } from './modules/hosts/hosts.module.js';
import { ImagesModule } from './modules/images/images.module.js';
import { OpenApiModule } from './modules/openapi/openapi.module.js';
import { ProjectsModule } from './modules/projects/projects.module.js';
import { VmsApiModule } from './modules/vms/vms-api.module.js';

/** Anything a Nest module may import. */
export type ModuleImport = NonNullable<ModuleMetadata['imports']>[number];

/**
 * Feature modules of the HTTP api (role `api` or `all`). A module added here has its `@Resource`
 * controllers served under /v1 and documented in /openapi.json.
 */
export const API_MODULES: readonly ModuleImport[] = [
  ProjectsModule,
  ApiKeysModule,
  FlavorsModule,
  ImagesModule,
  HostsModule,
  VmsApiModule,
  EventsModule,
  OpenApiModule,
];

/** Background modules (role `worker` or `all`): the conductor's BullMQ workers belong here. */
export const WORKER_MODULES: readonly ModuleImport[] = [ConductorModule];

/** Which feature modules a role runs. */
export function modulesForRole(role: HangarRole): ModuleImport[] {
  return [...(role === 'worker' ? [] : API_MODULES), ...(role === 'api' ? [] : WORKER_MODULES)];
}

/** Options of {@link AppModule.forRoot}. */
export interface AppModuleOptions {
  /** Modules mounted next to the role's own. */
  readonly extraModules?: readonly ModuleImport[];
}

/**
 * The root module, composed from the validated configuration: config, database, the HTTP
 * conventions and authentication, then the feature modules of the process's role.
 */
@Module({})
// biome-ignore lint/complexity/noStaticOnlyClass: Nest dynamic modules are classes with static factories
export class AppModule {
  static forRoot(config: HangarConfig, options: AppModuleOptions = {}): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot(config),
        PrismaModule.forRoot({
          url: config.databaseUrl,
          poolMax: config.databasePoolMax,
          applicationName: `hangar-${config.role}`,
        }),
        CommonModule,
        AuthModule,
        ...modulesForRole(config.role),
        ...(options.extraModules ?? []),
      ],
    };
  }
}
