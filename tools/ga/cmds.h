/* SPDX-License-Identifier: BSD-3-Clause */
/* Command handlers and the agent state they share. */
#ifndef VD_GA_CMDS_H
#define VD_GA_CMDS_H

#include <stdbool.h>
#include <stdint.h>

#include "dispatch.h"
#include "ga.h"

/* state.c: the state directory (handle counter, frozen marker). */
int ga_state_init(const char *statedir, const char *hook);
int64_t ga_state_next_handle(struct ga_err *e);
bool ga_state_frozen(void);
void ga_state_set_frozen(bool frozen);
const char *ga_state_hook(void);

/* base64.c */
char *ga_base64_encode(const unsigned char *p, size_t n);
unsigned char *ga_base64_decode(const char *s, size_t *len, struct ga_err *e);

/* cmd-file.c */
ga_handler ga_cmd_file_open, ga_cmd_file_close, ga_cmd_file_read,
    ga_cmd_file_write, ga_cmd_file_seek, ga_cmd_file_flush;
void ga_files_close_all(void);

/* cmd-freeze.c */
ga_handler ga_cmd_fsfreeze_status, ga_cmd_fsfreeze_freeze,
    ga_cmd_fsfreeze_freeze_list, ga_cmd_fsfreeze_thaw, ga_cmd_fstrim;
/* Undo the \040-style octal escapes of a mountinfo path, in place. */
void ga_unescape_mount_path(char *s);
/* Thaw what the agent froze (agent exit). */
void ga_fsfreeze_cleanup(void);

/* cmd-exec.c */
struct pollfd;
ga_handler ga_cmd_exec, ga_cmd_exec_status;
/* The children's pipe fds to wait on (up to max); then service them. */
size_t ga_exec_pollfds(struct pollfd *p, size_t max);
void ga_exec_service(void);

/* cmd-sys.c */
ga_handler ga_cmd_set_vcpus, ga_cmd_get_memory_block_info, ga_cmd_get_memory_blocks,
    ga_cmd_set_memory_blocks, ga_cmd_get_cpustats, ga_cmd_get_diskstats;

/* cmd-fsinfo.c */
ga_handler ga_cmd_get_fsinfo, ga_cmd_get_disks;
vd_json *ga_disk_address(const char *syspath, const char *name);

/* cmd-power.c */
ga_handler ga_cmd_shutdown, ga_cmd_set_time, ga_cmd_set_user_password;

/* cmd-suspend.c */
ga_handler ga_cmd_suspend_disk, ga_cmd_suspend_ram, ga_cmd_suspend_hybrid;

/* cmd-ssh.c */
ga_handler ga_cmd_ssh_get_keys, ga_cmd_ssh_add_keys, ga_cmd_ssh_remove_keys;

/* cmd-net.c */
ga_handler ga_cmd_network_get_interfaces;

/* cmd-info.c */
ga_handler ga_cmd_sync, ga_cmd_ping, ga_cmd_info, ga_cmd_get_time,
    ga_cmd_get_host_name, ga_cmd_get_timezone, ga_cmd_get_osinfo,
    ga_cmd_get_users, ga_cmd_get_vcpus;

#endif
