/* SPDX-License-Identifier: BSD-3-Clause */
/* AddressSanitizer builds only (lib/util/meson.build).  At exit
 * LeakSanitizer reads every page of every module's zero-initialised data
 * (.bss), the 5 MiB of its own runtime's too, and each page never touched
 * costs a page fault then.  Where faults are dear (virtual machines) that
 * was a sixth of a short sanitized program's run.  So at start each such
 * segment is populated in one call (the zero page mapped in, no memory
 * taken): the same pages, without a fault each.  (Collapsing them into
 * transparent huge pages was no faster, and slower in an emulated guest.) */
#include <link.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define PAGE ((uintptr_t)4096)

/* Populate each zero-initialised segment of a module; a failure only
 * leaves the faults to happen at exit. */
static int populate_bss(struct dl_phdr_info *info, size_t size, void *opaque)
{
    (void)size;
    (void)opaque;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t s, e;

        if (ph->p_type != PT_LOAD || ph->p_memsz <= ph->p_filesz)
            continue;
        s = (info->dlpi_addr + ph->p_vaddr + ph->p_filesz) & ~(PAGE - 1);
        e = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
        if (e > s)
            madvise((void *)s, e - s, MADV_POPULATE_READ);
    }
    return 0;
}

__attribute__((constructor)) static void bss_present(void)
{
    dl_iterate_phdr(populate_bss, NULL);
}
