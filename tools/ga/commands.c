/* SPDX-License-Identifier: BSD-3-Clause */
/* The command table: one description of every command of qemu-ga 7.2's
 * Linux build (its name, argument members with types and optionality,
 * whether it answers on success), in qemu-ga's registration order.
 * Commands without a handler answer "not currently supported". */
#include "cmds.h"

#define ARGS(...) (const struct ga_arg[]){ __VA_ARGS__, { NULL, 0, false } }
#define REQ(n, t) { n, t, false }
#define OPT(n, t) { n, t, true }

const struct ga_command ga_commands[] = {
    { "guest-sync-delimited", ga_cmd_sync, ARGS(REQ("id", GA_T_INT)), false },
    { "guest-sync", ga_cmd_sync, ARGS(REQ("id", GA_T_INT)), false },
    { "guest-ping", ga_cmd_ping, NULL, false },
    { "guest-get-time", ga_cmd_get_time, NULL, false },
    { "guest-set-time", ga_cmd_set_time, ARGS(OPT("time", GA_T_INT)), false },
    { "guest-info", ga_cmd_info, NULL, false },
    { "guest-shutdown", ga_cmd_shutdown, ARGS(OPT("mode", GA_T_STR)), true },
    { "guest-file-open", ga_cmd_file_open,
      ARGS(REQ("path", GA_T_STR), OPT("mode", GA_T_STR)), false },
    { "guest-file-close", ga_cmd_file_close, ARGS(REQ("handle", GA_T_INT)), false },
    { "guest-file-read", ga_cmd_file_read,
      ARGS(REQ("handle", GA_T_INT), OPT("count", GA_T_INT)), false },
    { "guest-file-write", ga_cmd_file_write,
      ARGS(REQ("handle", GA_T_INT), REQ("buf-b64", GA_T_STR), OPT("count", GA_T_INT)),
      false },
    { "guest-file-seek", ga_cmd_file_seek,
      ARGS(REQ("handle", GA_T_INT), REQ("offset", GA_T_INT), REQ("whence", GA_T_WHENCE)),
      false },
    { "guest-file-flush", ga_cmd_file_flush, ARGS(REQ("handle", GA_T_INT)), false },
    { "guest-fsfreeze-status", ga_cmd_fsfreeze_status, NULL, false },
    { "guest-fsfreeze-freeze", ga_cmd_fsfreeze_freeze, NULL, false },
    { "guest-fsfreeze-freeze-list", ga_cmd_fsfreeze_freeze_list,
      ARGS(OPT("mountpoints", GA_T_STRLIST)), false },
    { "guest-fsfreeze-thaw", ga_cmd_fsfreeze_thaw, NULL, false },
    { "guest-fstrim", ga_cmd_fstrim, ARGS(OPT("minimum", GA_T_INT)), false },
    { "guest-suspend-disk", ga_cmd_suspend_disk, NULL, true },
    { "guest-suspend-ram", ga_cmd_suspend_ram, NULL, true },
    { "guest-suspend-hybrid", ga_cmd_suspend_hybrid, NULL, true },
    { "guest-network-get-interfaces", ga_cmd_network_get_interfaces, NULL, false },
    { "guest-get-vcpus", ga_cmd_get_vcpus, NULL, false },
    { "guest-set-vcpus", ga_cmd_set_vcpus, ARGS(REQ("vcpus", GA_T_VCPULIST)), false },
    { "guest-get-disks", ga_cmd_get_disks, NULL, false },
    { "guest-get-fsinfo", ga_cmd_get_fsinfo, NULL, false },
    { "guest-set-user-password", ga_cmd_set_user_password,
      ARGS(REQ("username", GA_T_STR), REQ("password", GA_T_STR), REQ("crypted", GA_T_BOOL)),
      false },
    { "guest-get-memory-blocks", ga_cmd_get_memory_blocks, NULL, false },
    { "guest-set-memory-blocks", ga_cmd_set_memory_blocks, ARGS(REQ("mem-blks", GA_T_MEMBLKLIST)), false },
    { "guest-get-memory-block-info", ga_cmd_get_memory_block_info, NULL, false },
    { "guest-exec-status", ga_cmd_exec_status, ARGS(REQ("pid", GA_T_INT)), false },
    { "guest-exec", ga_cmd_exec,
      ARGS(REQ("path", GA_T_STR), OPT("arg", GA_T_STRLIST), OPT("env", GA_T_STRLIST),
           OPT("input-data", GA_T_STR), OPT("capture-output", GA_T_BOOL)), false },
    { "guest-get-host-name", ga_cmd_get_host_name, NULL, false },
    { "guest-get-users", ga_cmd_get_users, NULL, false },
    { "guest-get-timezone", ga_cmd_get_timezone, NULL, false },
    { "guest-get-osinfo", ga_cmd_get_osinfo, NULL, false },
    { "guest-get-devices", NULL, NULL, false },
    { "guest-ssh-get-authorized-keys", ga_cmd_ssh_get_keys, ARGS(REQ("username", GA_T_STR)), false },
    { "guest-ssh-add-authorized-keys", ga_cmd_ssh_add_keys,
      ARGS(REQ("username", GA_T_STR), REQ("keys", GA_T_STRLIST), OPT("reset", GA_T_BOOL)),
      false },
    { "guest-ssh-remove-authorized-keys", ga_cmd_ssh_remove_keys,
      ARGS(REQ("username", GA_T_STR), REQ("keys", GA_T_STRLIST)), false },
    { "guest-get-diskstats", ga_cmd_get_diskstats, NULL, false },
    { "guest-get-cpustats", ga_cmd_get_cpustats, NULL, false },
};

const size_t ga_ncommands = sizeof(ga_commands) / sizeof(ga_commands[0]);
