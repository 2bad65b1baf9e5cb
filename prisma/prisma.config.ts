// Prisma CLI configuration (Prisma 7 moved the connection URL out of schema.prisma).
// On this project's machines only `prisma generate` runs (apps/api/scripts/prisma-generate.mjs);
// migrations are applied by apps/api's migrator. On a machine where Prisma's schema engine can
// be downloaded, `prisma migrate deploy|status|diff --config prisma/prisma.config.ts` reads the
// same migrations and agrees with the migrator's `_prisma_migrations` rows.
import { defineConfig } from 'prisma/config';

export default defineConfig({
  schema: './schema.prisma',
  migrations: { path: './migrations' },
  datasource: { url: process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/hangar' },
});
