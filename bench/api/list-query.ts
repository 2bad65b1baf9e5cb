/**
 * The SQL of `prisma.vm.findMany` in VmsService.list for a first page (no page token), as Prisma
 * 7 with @prisma/adapter-pg sends it (captured with Prisma's query log): parameters are the
 * project id, page_size + 1 and the offset 0.
 */
export const LIST_VMS_SQL =
  'SELECT "public"."vms"."id", "public"."vms"."project_id", "public"."vms"."name", "public"."vms"."flavor_id", ' +
  '"public"."vms"."image_id", "public"."vms"."host_id", "public"."vms"."vcpus", "public"."vms"."memory_mib", ' +
  '"public"."vms"."disk_gib", "public"."vms"."desired_state"::text, "public"."vms"."observed_state"::text, ' +
  '"public"."vms"."version", "public"."vms"."labels", "public"."vms"."user_data", ' +
  '"public"."vms"."anti_affinity_group", "public"."vms"."cpu_model", "public"."vms"."machine_type", ' +
  '"public"."vms"."error_message", "public"."vms"."created_at", "public"."vms"."updated_at", ' +
  '"public"."vms"."deleted_at" FROM "public"."vms" WHERE ("public"."vms"."deleted_at" IS NULL AND ' +
  '"public"."vms"."project_id" = $1) ORDER BY "public"."vms"."created_at" ASC, "public"."vms"."id" ASC ' +
  'LIMIT $2 OFFSET $3';
