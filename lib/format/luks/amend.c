/* SPDX-License-Identifier: BSD-3-Clause */
/* LUKS key slot changes (qemu-img amend state=, new-secret=, old-secret=,
 * keyslot=, iter-time=) on a LUKS header wherever it lives: the luks
 * format's file, or the clusters of a qcow2 image.  QEMU 7.2's options,
 * checks and messages.
 *
 * Crash safety: a slot being added is inactive in the header on disk
 * while its key material is written, then the header makes it active; a
 * slot being erased is made inactive in the header before its key
 * material is overwritten.  Interrupted at any write, every passphrase
 * that opened the image before still does (but the erased one). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/luks/luks.h"

/* Key material reader for luks_unlock: inside the container. */
static int read_material(void *opaque, uint64_t off, uint64_t len, void *buf)
{
    struct luks_container *c = opaque;
    int64_t end = vd_getlength(c->file);

    if (end < 0)
        return (int)end;
    if (off > c->len || len > c->len - off || c->base + off > (uint64_t)end ||
        len > (uint64_t)end - (c->base + off))
        return vd_error(EINVAL, "LUKS key material lies outside its container");
    return vd_pread(c->file, c->base + off, len, buf, 0);
}

/* Writer of key material: inside the container. */
static int write_material(void *opaque, uint64_t off, uint64_t len, const void *buf)
{
    struct luks_container *c = opaque;

    if (off > c->len || len > c->len - off)
        return vd_error(EINVAL, "LUKS key material lies outside its container");
    return vd_pwrite(c->file, c->base + off, len, buf, 0);
}

/* What an amend asks for. */
struct amend_req {
    bool active, has_slot;
    int64_t slot;
    const char *old_id, *new_id;
    bool has_iter;
    uint64_t iter_time;
};

/* Parse the amend options (QEMU's names and messages). */
static int amend_parse(vd_opts *o, struct amend_req *q)
{
    const char *st = vd_opts_get(o, "state"), *ks = vd_opts_get(o, "keyslot");
    uint64_t v;
    int r;

    memset(q, 0, sizeof(*q));
    if (!st)
        return vd_error(EINVAL, "Parameter 'state' is missing");
    if (strcmp(st, "active") && strcmp(st, "inactive"))
        return vd_error(EINVAL, "Parameter 'state' does not accept value '%s'", st);
    q->active = !strcmp(st, "active");
    if (ks) {
        if ((r = vd_opts_get_u64(o, "keyslot", 0, &v)) < 0)
            return r;
        q->has_slot = true;
        q->slot = v > INT32_MAX ? INT32_MAX : (int64_t)v;
    }
    q->old_id = vd_opts_get(o, "old-secret");
    q->new_id = vd_opts_get(o, "new-secret");
    q->has_iter = vd_opts_get(o, "iter-time") != NULL;
    return vd_opts_get_u64(o, "iter-time", 2000, &q->iter_time);
}

/* Write the header (the key slot table lives there). */
static int store_header(struct luks_container *c)
{
    uint8_t buf[LUKS_HDR_LEN];
    int r;

    luks_encode(c->h, buf);
    if ((r = vd_pwrite(c->file, c->base, sizeof(buf), buf, 0)) < 0 || (r = vd_flush(c->file)) < 0)
        return vd_error_prefix(r, "Failed to write the LUKS header");
    return 0;
}

static int count_active(const struct luks_header *h)
{
    int c = 0;

    for (int i = 0; i < LUKS_SLOTS; i++)
        c += h->slots[i].active == LUKS_SLOT_ENABLED;
    return c;
}

/* Add a passphrase in a free (or the given) slot: the new key material is
 * written while the slot is inactive in the header on disk, then the
 * header, so a crash in between leaves the old passphrases working. */
static int amend_add(struct luks_container *c, const struct amend_req *q, bool force)
{
    uint8_t *pass = NULL;
    size_t pass_len = 0;
    int slot = -1, r;

    if (!q->new_id)
        return vd_error(EINVAL, "'new-secret' is required to activate a keyslot");
    if (q->old_id)
        return vd_error(EINVAL, "'old-secret' must not be given when activating keyslots");
    if (q->has_slot) {
        if (q->slot >= LUKS_SLOTS)
            return vd_error(EINVAL, "Invalid keyslot %u specified, must be between 0 and %u",
                            (unsigned)q->slot, LUKS_SLOTS - 1);
        slot = (int)q->slot;
    } else {
        for (int i = LUKS_SLOTS - 1; i >= 0; i--)
            if (c->h->slots[i].active != LUKS_SLOT_ENABLED)
                slot = i;
        if (slot < 0)
            return vd_error(ENOSPC, "Can't add a keyslot - all keyslots are in use");
    }
    if (!force && c->h->slots[slot].active == LUKS_SLOT_ENABLED)
        return vd_error(EINVAL, "Refusing to overwrite active keyslot %i - please erase it "
                        "first", slot);
    if ((r = vd_secret_get(q->new_id, &pass, &pass_len)) < 0)
        return r;
    c->h->slots[slot].active = LUKS_SLOT_DISABLED;
    if ((r = store_header(c)) >= 0 &&
        (r = luks_store_slot(c->h, c->a, slot, pass, pass_len, c->mk, q->iter_time,
                             write_material, c)) >= 0 &&
        (r = vd_flush(c->file)) >= 0)
        r = store_header(c);
    else if (r < 0)
        r = vd_error_prefix(r, "Failed to write to keyslot %i", slot);
    vd_secret_free(pass, pass_len);
    return r;
}

/* Does slot i open with the passphrase of secret id?  1, 0 or -errno. */
static int slot_matches(struct luks_container *c, int i, const uint8_t *pass, size_t pass_len)
{
    struct luks_header one = *c->h;
    uint8_t mk[VD_CIPHER_MAX_KEY];
    int r;

    if (c->h->slots[i].active != LUKS_SLOT_ENABLED)
        return 0;
    for (int j = 0; j < LUKS_SLOTS; j++)
        if (j != i)
            one.slots[j].active = LUKS_SLOT_DISABLED;
    r = luks_unlock(&one, c->a, pass, pass_len, mk, read_material, c);
    vd_wipe(mk, sizeof(mk));
    vd_wipe(&one, sizeof(one));
    if (r == -EPERM) {
        vd_error_clear();
        return 0;
    }
    return r < 0 ? r : 1;
}

/* Erase slot i: inactive in the header first, then the key material
 * overwritten with random bytes. */
static int erase_slot(struct luks_container *c, int i)
{
    size_t len = (size_t)c->h->key_bytes * LUKS_STRIPES;
    uint8_t *junk = malloc(len);
    int r;

    if (!junk)
        return vd_error(ENOMEM, "out of memory");
    memset(c->h->slots[i].salt, 0, LUKS_SALT_LEN);
    c->h->slots[i].iters = 0;
    c->h->slots[i].active = LUKS_SLOT_DISABLED;
    if ((r = store_header(c)) >= 0 && (r = vd_random(junk, len)) >= 0 &&
        (r = write_material(c, (uint64_t)c->h->slots[i].key_offset * LUKS_SECTOR, len,
                            junk)) < 0)
        r = vd_error_prefix(r, "Failed to erase keyslot %i", i);
    free(junk);
    return r < 0 ? r : vd_flush(c->file);
}

/* The slots an erase by passphrase selects (bit i: slot i). */
static int match_slots(struct luks_container *c, const char *id, unsigned *mask)
{
    uint8_t *pass = NULL;
    size_t pass_len = 0;
    int r;

    *mask = 0;
    if ((r = vd_secret_get(id, &pass, &pass_len)) < 0)
        return r;
    for (int i = 0; i < LUKS_SLOTS && r >= 0; i++)
        if ((r = slot_matches(c, i, pass, pass_len)) > 0)
            *mask |= 1u << i;
    vd_secret_free(pass, pass_len);
    return r < 0 ? r : 0;
}

/* Erase one given slot (checked against old-secret when given). */
static int erase_given(struct luks_container *c, const struct amend_req *q, bool force)
{
    int i = (int)q->slot, r;
    unsigned mask;

    if (q->slot >= LUKS_SLOTS)
        return vd_error(EINVAL, "Invalid keyslot %i specified, must be between 0 and %i", i,
                        LUKS_SLOTS - 1);
    if (q->old_id) {
        if ((r = match_slots(c, q->old_id, &mask)) < 0)
            return r;
        if (!(mask & (1u << i)))
            return vd_error(EINVAL, "Given keyslot %i doesn't contain the given old password "
                            "for erase operation", i);
    }
    if (c->h->slots[i].active != LUKS_SLOT_ENABLED)
        return vd_error(EINVAL, "Given keyslot %i is already erased (inactive) ", i);
    if (!force && count_active(c->h) == 1)
        return vd_error(EINVAL, "Attempt to erase the only active keyslot %i which will erase "
                        "all the data in the image irreversibly - refusing operation", i);
    return erase_slot(c, i);
}

/* Erase every slot the old passphrase opens. */
static int erase_matching(struct luks_container *c, const struct amend_req *q, bool force)
{
    unsigned mask;
    int r = match_slots(c, q->old_id, &mask);

    if (r < 0)
        return r;
    if (!mask)
        return vd_error(EINVAL, "No keyslots match given (old) password for erase operation");
    if (!force && __builtin_popcount(mask) == count_active(c->h))
        return vd_error(EINVAL, "All the active keyslots match the (old) password that was "
                        "given and erasing them will erase all the data in the image "
                        "irreversibly - refusing operation");
    for (int i = 0; i < LUKS_SLOTS && r >= 0; i++)
        if (mask & (1u << i))
            r = erase_slot(c, i);
    return r;
}

static int amend_erase(struct luks_container *c, const struct amend_req *q, bool force)
{
    if (q->new_id)
        return vd_error(EINVAL, "'new-secret' must not be given when erasing keyslots");
    if (q->has_iter)
        return vd_error(EINVAL, "'iter-time' must not be given when erasing keyslots");
    if (q->has_slot)
        return erase_given(c, q, force);
    if (q->old_id)
        return erase_matching(c, q, force);
    return vd_error(EINVAL, "To erase keyslot(s), either explicit keyslot index or the "
                    "password currently contained in them must be given");
}

int luks_amend_keyslots(struct luks_container *c, vd_opts *opts, bool force)
{
    struct amend_req q;
    int r;

    if ((r = amend_parse(opts, &q)) < 0)
        return r;
    return q.active ? amend_add(c, &q, force) : amend_erase(c, &q, force);
}
