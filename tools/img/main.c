/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img: entry point.  Parses the global options (-h, -V, -T,
 * --untrusted), then dispatches to one subcommand per file, as qemu-img
 * does; --help prints the command synopses and the registered drivers. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "vdisk/object.h"
#include "img.h"
#include "cli.h"

/* One subcommand: its name and its handler. */
struct img_command {
    const char *name;
    int (*fn)(int argc, char **argv);
};

static const struct img_command commands[] = {
    { "amend", img_amend },
    { "bench", img_bench },
    { "bitmap", img_bitmap },
    { "check", img_check },
    { "commit", img_commit },
    { "compare", img_compare },
    { "convert", img_convert },
    { "create", img_create },
    { "dd", img_dd },
    { "info", img_info },
    { "map", img_map },
    { "measure", img_measure },
    { "snapshot", img_snapshot },
    { "rebase", img_rebase },
    { "resize", img_resize },
};

/* The synopsis of every command, in qemu-img's order and wording. */
static const char help_synopses[] =
"  amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename\n"
"  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename\n"
"  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap\n"
"  check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename\n"
"  commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename\n"
"  compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2\n"
"  convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename\n"
"  create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]\n"
"  dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output\n"
"  info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n"
"  map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename\n"
"  measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]\n"
"  snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename\n"
"  rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename\n"
"  resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size\n";

/* What the parameters named in the synopses mean. */
static const char help_params[] =
"Command parameters:\n"
"  'filename' is a disk image filename\n"
"  'objectdef' is a QEMU user creatable object definition. See the qemu(1)\n"
"    manual page for a description of the object properties. The most common\n"
"    object type is a 'secret', which is used to supply passwords and/or\n"
"    encryption keys.\n"
"  'fmt' is the disk image format. It is guessed automatically in most cases\n"
"  'cache' is the cache mode used to write the output disk image, the valid\n"
"    options are: 'none', 'writeback' (default, except for convert), 'writethrough',\n"
"    'directsync' and 'unsafe' (default for convert)\n"
"  'src_cache' is the cache mode used to read input disk images, the valid\n"
"    options are the same as for the 'cache' option\n"
"  'size' is the disk image size in bytes. Optional suffixes\n"
"    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),\n"
"    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are\n"
"    supported. 'b' is ignored.\n"
"  'output_filename' is the destination disk image filename\n"
"  'output_fmt' is the destination format\n"
"  'options' is a comma separated list of format specific options in a\n"
"    name=value format. Use -o help for an overview of the options supported by\n"
"    the used format\n"
"  'snapshot_param' is param used for internal snapshot, format\n"
"    is 'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
"    '[ID_OR_NAME]'\n"
"  '-c' indicates that target image must be compressed (qcow format only)\n"
"  '-u' allows unsafe backing chains. For rebasing, it is assumed that old and\n"
"       new backing file match exactly. The image doesn't need a working\n"
"       backing file before rebasing in this case (useful for renaming the\n"
"       backing file). For image creation, allow creating without attempting\n"
"       to open the backing file.\n"
"  '-h' with or without a command shows this help and lists the supported formats\n"
"  '-p' show progress of command (only certain commands)\n"
"  '-q' use Quiet mode - do not print any output (except errors)\n"
"  '-S' indicates the consecutive number of bytes (defaults to 4k) that must\n"
"       contain only zeros for " IMG_PROG " to create a sparse image during\n"
"       conversion. If the number of bytes is 0, the source will not be scanned for\n"
"       unallocated or zero sectors, and the destination image will always be\n"
"       fully allocated\n"
"  '--output' takes the format in which the output must be done (human or json)\n"
"  '-n' skips the target volume creation (useful if the volume is created\n"
"       prior to running " IMG_PROG ")\n";

/* Parameters of single subcommands. */
static const char help_subcommands[] =
"Parameters to bitmap subcommand:\n"
"  'bitmap' is the name of the bitmap to manipulate, through one or more\n"
"       actions from '--add', '--remove', '--clear', '--enable', '--disable',\n"
"       or '--merge source'\n"
"  '-g granularity' sets the granularity for '--add' actions\n"
"  '-b source' and '-F src_fmt' tell '--merge' actions to find the source\n"
"       bitmaps from an alternative file\n"
"\n"
"Parameters to check subcommand:\n"
"  '-r' tries to repair any inconsistencies that are found during the check.\n"
"       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes all\n"
"       kinds of errors, with a higher risk of choosing the wrong fix or\n"
"       hiding corruption that has already occurred.\n"
"\n"
"Parameters to convert subcommand:\n"
"  '--bitmaps' copies all top-level persistent bitmaps to destination\n"
"  '-m' specifies how many coroutines work in parallel during the convert\n"
"       process (defaults to 8, or two per processor when that is fewer)\n"
"  '-W' allow to write to the target out of order rather than sequential\n"
"\n"
"Parameters to snapshot subcommand:\n"
"  'snapshot' is the name of the snapshot to create, apply or delete\n"
"  '-a' applies a snapshot (revert disk to saved state)\n"
"  '-c' creates a snapshot\n"
"  '-d' deletes a snapshot\n"
"  '-l' lists all snapshots in the given image\n"
"\n"
"Parameters to compare subcommand:\n"
"  '-f' first image format\n"
"  '-F' second image format\n"
"  '-s' run in Strict mode - fail on different image size or sector allocation\n"
"\n"
"Parameters to dd subcommand:\n"
"  'bs=BYTES' read and write up to BYTES bytes at a time (default: 512)\n"
"  'count=N' copy only N input blocks\n"
"  'if=FILE' read from FILE\n"
"  'of=FILE' write to FILE\n"
"  'skip=N' skip N bs-sized blocks at the start of input\n";

/* The version banner that heads --version and --help. */
static void print_version(void)
{
    printf("%s version %s\n"
           "Copyright (c) the vdisk developers; BSD-3-Clause license\n",
           IMG_PROG, VD_VERSION_STRING);
}

/* vd_driver_foreach callback: " name" for each driver. */
static void print_driver_name(const struct vd_driver *d, void *opaque)
{
    (void)opaque;
    printf(" %s", vd_driver_name(d));
}

/* Print the full --help text to stdout and exit 0. */
void img_help(void)
{
    print_version();
    printf("usage: %s [standard options] command [command options]\n"
           "Disk image utility (drop-in for qemu-img)\n"
           "\n"
           "    '-h', '--help'       display this help and exit\n"
           "    '-V', '--version'    output version information and exit\n"
           "    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
           "                         specify tracing options (accepted, ignored)\n"
           "    '--untrusted'        (also after any command) treat the images as hostile:\n"
           "                         refuse backing files, data files, other vmdk extents,\n"
           "                         json: and protocol names inside them and a format\n"
           "                         that does not match -f; cap table sizes (also\n"
           "                         VDISK_UNTRUSTED=1)\n"
           "\n"
           "Command syntax:\n", IMG_PROG);
    fputs(help_synopses, stdout);
    printf("\n%s\n%s\nSupported formats:", help_params, help_subcommands);
    vd_driver_foreach(print_driver_name, NULL);
    printf("\n\nSee %s(1) for the full description of every command.\n",
           IMG_PROG);
    exit(0);
}

/* The handler of a subcommand name, or NULL. */
static const struct img_command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(commands[i].name, name))
            return &commands[i];
    return NULL;
}

/* Parse the global options; returns the index of the command or -1. */
static int parse_global_options(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "trace", required_argument, NULL, 'T' },
        { "untrusted", no_argument, NULL, 256 },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, "+:hVT:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            img_help();
        case 'V':
            print_version();
            exit(0);
        case 'T':
            break;              /* tracing is accepted and ignored */
        case 256:               /* --untrusted */
            img_untrusted = true;
            break;
        default:
            img_getopt_error(c, argv);
            return -1;
        }
    }
    return optind;
}

/* Take every --untrusted out of the subcommand's arguments (before "--"),
 * so that each subcommand accepts it without knowing it; returns the new
 * argument count. */
static int take_untrusted(int argc, char **argv)
{
    int out = 0, i;

    for (i = 0; i < argc && strcmp(argv[i], "--"); i++) {
        if (i > 0 && !strcmp(argv[i], "--untrusted"))
            img_untrusted = true;
        else
            argv[out++] = argv[i];
    }
    for (; i < argc; i++)
        argv[out++] = argv[i];
    argv[out] = NULL;
    return out;
}

/* Register every --object of the subcommand's arguments (before "--")
 * up front, so that any open can find TLS credentials and secrets by id;
 * the subcommands' own parsers skip them.  -1 (printed) on a bad one. */
static int add_objects(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++) {
        const char *spec = NULL;
        if (!strcmp(argv[i], "--object") && i + 1 < argc)
            spec = argv[++i];
        else if (!strncmp(argv[i], "--object=", 9))
            spec = argv[i] + 9;
        if (spec && vd_object_add(spec) < 0) {
            img_error("%s", vd_errmsg());
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    const struct img_command *cmd;
    int first;

    img_untrusted = vd_untrusted_env();
    first = parse_global_options(argc, argv);
    if (first < 0)
        return 1;
    if (first >= argc) {
        img_usage_error("Not enough arguments");
        return 1;
    }
    cmd = find_command(argv[first]);
    if (!cmd) {
        img_usage_error("Command not found: %s", argv[first]);
        return 1;
    }
    argc = first + take_untrusted(argc - first, argv + first);
    if (add_objects(argc - first, argv + first) < 0)
        return 1;
    optind = 0;                 /* restart getopt for the subcommand */
    return cmd->fn(argc - first, argv + first);
}
