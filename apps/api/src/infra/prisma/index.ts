/**
 * The data layer of the control plane: the generated Prisma client and its types, the Nest
 * PrismaService, the migrator (Prisma-compatible history) and the VM version helper.
 */
export * from '../../gen/prisma/client.js';
export * from './migrator.js';
export * from './prisma.module.js';
export * from './prisma.service.js';
export * from './vm-version.js';
