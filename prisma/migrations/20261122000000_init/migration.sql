-- Hangar's initial schema, written to match prisma/schema.prisma as `prisma migrate diff` renders
-- it (names, types, defaults, referential actions), followed by what Prisma cannot express:
-- CHECK constraints, the VM version trigger and a partial unique index (see prisma/README.md).

-- CreateEnum
CREATE TYPE "api_key_role" AS ENUM ('admin', 'member', 'reader');

-- CreateEnum
CREATE TYPE "host_state" AS ENUM ('UP', 'DOWN', 'MAINTENANCE');

-- CreateEnum
CREATE TYPE "vm_state" AS ENUM ('PENDING', 'SCHEDULING', 'CREATING', 'STOPPED', 'RUNNING', 'PAUSED', 'MIGRATING', 'INCOMING', 'ERROR', 'UNKNOWN', 'DELETING', 'DELETED');

-- CreateEnum
CREATE TYPE "vm_desired_state" AS ENUM ('RUNNING', 'STOPPED', 'PAUSED', 'DELETED');

-- CreateEnum
CREATE TYPE "allocation_kind" AS ENUM ('primary', 'migration');

-- CreateEnum
CREATE TYPE "operation_status" AS ENUM ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED');

-- CreateEnum
CREATE TYPE "migration_status" AS ENUM ('PENDING', 'PREPARING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED');

-- CreateTable
CREATE TABLE "projects" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "name" VARCHAR(63) NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "quota_vcpus" INTEGER NOT NULL DEFAULT 64,
    "quota_memory_mib" INTEGER NOT NULL DEFAULT 131072,
    "quota_vms" INTEGER NOT NULL DEFAULT 32,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "projects_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "api_keys" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "project_id" UUID NOT NULL,
    "name" VARCHAR(63) NOT NULL DEFAULT '',
    "role" "api_key_role" NOT NULL,
    "prefix" VARCHAR(32) NOT NULL,
    "secret_hash" CHAR(64) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "last_used_at" TIMESTAMPTZ(3),
    "revoked_at" TIMESTAMPTZ(3),

    CONSTRAINT "api_keys_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "hosts" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "name" VARCHAR(253) NOT NULL,
    "agent_address" TEXT NOT NULL,
    "state" "host_state" NOT NULL DEFAULT 'DOWN',
    "cordoned" BOOLEAN NOT NULL DEFAULT false,
    "cpu_allocation_ratio" DOUBLE PRECISION NOT NULL DEFAULT 4.0,
    "ram_allocation_ratio" DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    "cores" INTEGER NOT NULL,
    "memory_mib" INTEGER NOT NULL,
    "used_vcpus" INTEGER NOT NULL DEFAULT 0,
    "used_memory_mib" INTEGER NOT NULL DEFAULT 0,
    "driver" VARCHAR(16) NOT NULL DEFAULT 'qemu',
    "accelerator" VARCHAR(16) NOT NULL,
    "qemu_version" VARCHAR(64) NOT NULL DEFAULT '',
    "machine_types" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "cpu_models" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "pools" JSONB NOT NULL DEFAULT '[]',
    "features" JSONB NOT NULL DEFAULT '{}',
    "labels" JSONB NOT NULL DEFAULT '{}',
    "agent_version" VARCHAR(64) NOT NULL DEFAULT '',
    "last_heartbeat_at" TIMESTAMPTZ(3),
    "registered_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "hosts_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "join_tokens" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "token_hash" CHAR(64) NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "expires_at" TIMESTAMPTZ(3) NOT NULL,
    "used_at" TIMESTAMPTZ(3),
    "host_id" UUID,
    "revoked_at" TIMESTAMPTZ(3),

    CONSTRAINT "join_tokens_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "flavors" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "name" VARCHAR(63) NOT NULL,
    "vcpus" INTEGER NOT NULL,
    "memory_mib" INTEGER NOT NULL,
    "disk_gib" INTEGER NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "flavors_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "images" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "name" VARCHAR(63) NOT NULL,
    "pool" VARCHAR(32) NOT NULL,
    "kernel_path" TEXT,
    "initrd_path" TEXT,
    "cmdline" TEXT,
    "disk_path" TEXT,
    "format" VARCHAR(8) NOT NULL DEFAULT 'qcow2',
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "images_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "vms" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "project_id" UUID NOT NULL,
    "name" VARCHAR(63) NOT NULL,
    "flavor_id" UUID NOT NULL,
    "image_id" UUID NOT NULL,
    "host_id" UUID,
    "vcpus" INTEGER NOT NULL,
    "memory_mib" INTEGER NOT NULL,
    "disk_gib" INTEGER NOT NULL,
    "desired_state" "vm_desired_state" NOT NULL DEFAULT 'RUNNING',
    "observed_state" "vm_state" NOT NULL DEFAULT 'PENDING',
    "version" INTEGER NOT NULL DEFAULT 1,
    "labels" JSONB NOT NULL DEFAULT '{}',
    "user_data" TEXT,
    "anti_affinity_group" VARCHAR(63),
    "cpu_model" VARCHAR(64) NOT NULL DEFAULT 'qemu64',
    "machine_type" VARCHAR(64) NOT NULL DEFAULT 'pc',
    "error_message" TEXT,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "deleted_at" TIMESTAMPTZ(3),

    CONSTRAINT "vms_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "allocations" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "vm_id" UUID NOT NULL,
    "host_id" UUID NOT NULL,
    "vcpus" INTEGER NOT NULL,
    "memory_mib" INTEGER NOT NULL,
    "kind" "allocation_kind" NOT NULL DEFAULT 'primary',
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "allocations_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "operations" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "project_id" UUID,
    "kind" VARCHAR(32) NOT NULL,
    "vm_id" UUID,
    "host_id" UUID,
    "status" "operation_status" NOT NULL DEFAULT 'PENDING',
    "params" JSONB NOT NULL DEFAULT '{}',
    "progress" JSONB NOT NULL DEFAULT '{}',
    "percent" INTEGER NOT NULL DEFAULT 0,
    "result" JSONB,
    "error_code" VARCHAR(64),
    "error_message" TEXT,
    "parent_id" UUID,
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "cancel_requested_at" TIMESTAMPTZ(3),
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "started_at" TIMESTAMPTZ(3),
    "finished_at" TIMESTAMPTZ(3),

    CONSTRAINT "operations_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "migrations" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "vm_id" UUID NOT NULL,
    "operation_id" UUID,
    "source_host_id" UUID,
    "destination_host_id" UUID,
    "status" "migration_status" NOT NULL DEFAULT 'PENDING',
    "live" BOOLEAN NOT NULL DEFAULT true,
    "downtime_ms" INTEGER,
    "total_ms" INTEGER,
    "transferred_bytes" BIGINT,
    "error_code" VARCHAR(64),
    "error_message" TEXT,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "started_at" TIMESTAMPTZ(3),
    "finished_at" TIMESTAMPTZ(3),

    CONSTRAINT "migrations_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "events" (
    "id" BIGSERIAL NOT NULL,
    "resource_type" VARCHAR(32) NOT NULL,
    "resource_id" UUID NOT NULL,
    "project_id" UUID,
    "kind" VARCHAR(64) NOT NULL,
    "data" JSONB NOT NULL DEFAULT '{}',
    "at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "events_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "idempotency_records" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "project_id" UUID NOT NULL,
    "key" VARCHAR(255) NOT NULL,
    "method" VARCHAR(8) NOT NULL,
    "path" TEXT NOT NULL,
    "request_hash" CHAR(64) NOT NULL,
    "response_status" INTEGER,
    "response_body" JSONB,
    "operation_id" UUID,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "completed_at" TIMESTAMPTZ(3),

    CONSTRAINT "idempotency_records_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "projects_name_key" ON "projects"("name");

-- CreateIndex
CREATE UNIQUE INDEX "api_keys_prefix_key" ON "api_keys"("prefix");

-- CreateIndex
CREATE INDEX "api_keys_project_id_idx" ON "api_keys"("project_id");

-- CreateIndex
CREATE UNIQUE INDEX "hosts_name_key" ON "hosts"("name");

-- CreateIndex
CREATE INDEX "hosts_state_cordoned_idx" ON "hosts"("state", "cordoned");

-- CreateIndex
CREATE UNIQUE INDEX "join_tokens_token_hash_key" ON "join_tokens"("token_hash");

-- CreateIndex
CREATE UNIQUE INDEX "flavors_name_key" ON "flavors"("name");

-- CreateIndex
CREATE UNIQUE INDEX "images_name_key" ON "images"("name");

-- CreateIndex
CREATE INDEX "vms_project_id_observed_state_idx" ON "vms"("project_id", "observed_state");

-- CreateIndex
CREATE INDEX "vms_project_id_created_at_id_idx" ON "vms"("project_id", "created_at", "id");

-- CreateIndex
CREATE INDEX "vms_host_id_idx" ON "vms"("host_id");

-- CreateIndex
CREATE INDEX "vms_project_id_anti_affinity_group_idx" ON "vms"("project_id", "anti_affinity_group");

-- CreateIndex
CREATE INDEX "allocations_host_id_idx" ON "allocations"("host_id");

-- CreateIndex
CREATE UNIQUE INDEX "allocations_vm_id_host_id_key" ON "allocations"("vm_id", "host_id");

-- CreateIndex
CREATE INDEX "operations_status_updated_at_idx" ON "operations"("status", "updated_at");

-- CreateIndex
CREATE INDEX "operations_vm_id_status_idx" ON "operations"("vm_id", "status");

-- CreateIndex
CREATE INDEX "operations_project_id_created_at_idx" ON "operations"("project_id", "created_at");

-- CreateIndex
CREATE INDEX "operations_host_id_idx" ON "operations"("host_id");

-- CreateIndex
CREATE INDEX "operations_parent_id_idx" ON "operations"("parent_id");

-- CreateIndex
CREATE UNIQUE INDEX "migrations_operation_id_key" ON "migrations"("operation_id");

-- CreateIndex
CREATE INDEX "migrations_vm_id_created_at_idx" ON "migrations"("vm_id", "created_at");

-- CreateIndex
CREATE INDEX "migrations_status_idx" ON "migrations"("status");

-- CreateIndex
CREATE INDEX "events_project_id_at_idx" ON "events"("project_id", "at");

-- CreateIndex
CREATE INDEX "events_resource_type_resource_id_at_idx" ON "events"("resource_type", "resource_id", "at");

-- CreateIndex
CREATE INDEX "idempotency_records_created_at_idx" ON "idempotency_records"("created_at");

-- CreateIndex
CREATE UNIQUE INDEX "idempotency_records_project_id_key_key" ON "idempotency_records"("project_id", "key");

-- AddForeignKey
ALTER TABLE "api_keys" ADD CONSTRAINT "api_keys_project_id_fkey" FOREIGN KEY ("project_id") REFERENCES "projects"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "join_tokens" ADD CONSTRAINT "join_tokens_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "vms" ADD CONSTRAINT "vms_project_id_fkey" FOREIGN KEY ("project_id") REFERENCES "projects"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "vms" ADD CONSTRAINT "vms_flavor_id_fkey" FOREIGN KEY ("flavor_id") REFERENCES "flavors"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "vms" ADD CONSTRAINT "vms_image_id_fkey" FOREIGN KEY ("image_id") REFERENCES "images"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "vms" ADD CONSTRAINT "vms_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "allocations" ADD CONSTRAINT "allocations_vm_id_fkey" FOREIGN KEY ("vm_id") REFERENCES "vms"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "allocations" ADD CONSTRAINT "allocations_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "operations" ADD CONSTRAINT "operations_project_id_fkey" FOREIGN KEY ("project_id") REFERENCES "projects"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "operations" ADD CONSTRAINT "operations_vm_id_fkey" FOREIGN KEY ("vm_id") REFERENCES "vms"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "operations" ADD CONSTRAINT "operations_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "operations" ADD CONSTRAINT "operations_parent_id_fkey" FOREIGN KEY ("parent_id") REFERENCES "operations"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "migrations" ADD CONSTRAINT "migrations_vm_id_fkey" FOREIGN KEY ("vm_id") REFERENCES "vms"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "migrations" ADD CONSTRAINT "migrations_operation_id_fkey" FOREIGN KEY ("operation_id") REFERENCES "operations"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "migrations" ADD CONSTRAINT "migrations_source_host_id_fkey" FOREIGN KEY ("source_host_id") REFERENCES "hosts"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "migrations" ADD CONSTRAINT "migrations_destination_host_id_fkey" FOREIGN KEY ("destination_host_id") REFERENCES "hosts"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "idempotency_records" ADD CONSTRAINT "idempotency_records_project_id_fkey" FOREIGN KEY ("project_id") REFERENCES "projects"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "idempotency_records" ADD CONSTRAINT "idempotency_records_operation_id_fkey" FOREIGN KEY ("operation_id") REFERENCES "operations"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- ---------------------------------------------------------------------------------------------
-- Beyond Prisma's schema language (Prisma neither creates nor drops these).

-- Sizes and counters can never go negative; a release that would is a bug and must fail loudly.
ALTER TABLE "hosts" ADD CONSTRAINT "hosts_capacity_check"
    CHECK ("cores" > 0 AND "memory_mib" > 0 AND "cpu_allocation_ratio" > 0 AND "ram_allocation_ratio" > 0);
ALTER TABLE "hosts" ADD CONSTRAINT "hosts_usage_check" CHECK ("used_vcpus" >= 0 AND "used_memory_mib" >= 0);
ALTER TABLE "flavors" ADD CONSTRAINT "flavors_size_check" CHECK ("vcpus" > 0 AND "memory_mib" > 0 AND "disk_gib" >= 0);
ALTER TABLE "vms" ADD CONSTRAINT "vms_size_check" CHECK ("vcpus" > 0 AND "memory_mib" > 0 AND "disk_gib" >= 0);
ALTER TABLE "allocations" ADD CONSTRAINT "allocations_size_check" CHECK ("vcpus" > 0 AND "memory_mib" > 0);
ALTER TABLE "projects" ADD CONSTRAINT "projects_quota_check"
    CHECK ("quota_vcpus" >= 0 AND "quota_memory_mib" >= 0 AND "quota_vms" >= 0);
ALTER TABLE "operations" ADD CONSTRAINT "operations_percent_check" CHECK ("percent" BETWEEN 0 AND 100);

-- A VM's name is unique in its project among VMs that are not deleted (it is the guest's host
-- name and what declarative files refer to).
CREATE UNIQUE INDEX "vms_project_id_name_live_key" ON "vms"("project_id", "name") WHERE "deleted_at" IS NULL;

-- The VM's version is its ETag: every UPDATE that changes the row bumps it, whichever code path
-- (Prisma, raw SQL, a future script) wrote it. A write that changes nothing keeps version and
-- updated_at, so the representation and its ETag stay equal.
CREATE FUNCTION "vms_bump_version"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(NEW) - 'version' - 'updated_at') IS DISTINCT FROM (to_jsonb(OLD) - 'version' - 'updated_at') THEN
        NEW."version" := OLD."version" + 1;
        NEW."updated_at" := GREATEST(NEW."updated_at", CURRENT_TIMESTAMP);
    ELSE
        NEW."version" := OLD."version";
        NEW."updated_at" := OLD."updated_at";
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER "vms_bump_version" BEFORE UPDATE ON "vms" FOR EACH ROW EXECUTE FUNCTION "vms_bump_version"();
