/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-network-get-interfaces: getifaddrs(3) in its order, one entry per
 * interface name with its MAC address, and, for interfaces with IPv4/IPv6
 * addresses, those addresses and the /proc/net/dev counters. */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cmds.h"

/* The entry named name, created (with its MAC address) when new. */
static vd_json *interface(vd_json *list, const char *name, int sock)
{
    struct ifreq ifr;
    vd_json *o;

    for (size_t i = 0; i < vd_json_count(list); i++)
        if (strcmp(vd_json_str(vd_json_get(vd_json_at(list, i), "name")), name) == 0)
            return vd_json_at(list, i);
    o = vd_json_new_object();
    vd_json_set_str(o, "name", name);
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
    if (sock >= 0 && ioctl(sock, SIOCGIFHWADDR, &ifr) == 0) {
        const unsigned char *m = (const unsigned char *)ifr.ifr_hwaddr.sa_data;
        char mac[18];
        snprintf(mac, sizeof(mac), "%02x:%02x:%02x:%02x:%02x:%02x",
                 m[0], m[1], m[2], m[3], m[4], m[5]);
        vd_json_set_str(o, "hardware-address", mac);
    }
    vd_json_append(list, o);
    return o;
}

/* Number of bits set in a netmask. */
static int64_t prefix_len(const unsigned char *p, size_t n)
{
    int64_t bits = 0;

    for (size_t i = 0; i < n; i++)
        bits += __builtin_popcount(p[i]);
    return bits;
}

/* An ip-addresses item for an AF_INET/AF_INET6 entry, NULL otherwise. */
static vd_json *address(const struct ifaddrs *ifa)
{
    char text[INET6_ADDRSTRLEN];
    vd_json *a;
    int64_t prefix;

    if (!ifa->ifa_addr)
        return NULL;
    if (ifa->ifa_addr->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const void *)ifa->ifa_addr;
        const struct sockaddr_in *mask = (const void *)ifa->ifa_netmask;
        inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
        prefix = mask ? prefix_len((const void *)&mask->sin_addr, 4) : 0;
    } else if (ifa->ifa_addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const void *)ifa->ifa_addr;
        const struct sockaddr_in6 *mask = (const void *)ifa->ifa_netmask;
        inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
        prefix = mask ? prefix_len((const void *)&mask->sin6_addr, 16) : 0;
    } else {
        return NULL;
    }
    a = vd_json_new_object();
    vd_json_set_str(a, "ip-address", text);
    vd_json_set_str(a, "ip-address-type", ifa->ifa_addr->sa_family == AF_INET ? "ipv4" : "ipv6");
    vd_json_set_int(a, "prefix", prefix);
    return a;
}

/* The /proc/net/dev counters of name, NULL when not listed. */
static vd_json *statistics(const char *name)
{
    FILE *f = fopen("/proc/net/dev", "r");
    char line[512];
    vd_json *st = NULL;

    if (!f)
        return NULL;
    while (!st && fgets(line, sizeof(line), f)) {
        unsigned long long v[16];
        char *colon = strchr(line, ':'), *n = line;

        if (!colon)
            continue;
        *colon = 0;
        while (*n == ' ')
            n++;
        if (strcmp(n, name) != 0)
            continue;
        if (sscanf(colon + 1, "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu "
                   "%llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                   &v[7], &v[8], &v[9], &v[10], &v[11], &v[12], &v[13], &v[14], &v[15]) != 16)
            break;
        st = vd_json_new_object();
        vd_json_set_uint(st, "rx-bytes", v[0]);
        vd_json_set_uint(st, "rx-packets", v[1]);
        vd_json_set_uint(st, "rx-errs", v[2]);
        vd_json_set_uint(st, "rx-dropped", v[3]);
        vd_json_set_uint(st, "tx-bytes", v[8]);
        vd_json_set_uint(st, "tx-packets", v[9]);
        vd_json_set_uint(st, "tx-errs", v[10]);
        vd_json_set_uint(st, "tx-dropped", v[11]);
    }
    fclose(f);
    return st;
}

/* guest-network-get-interfaces */
void ga_cmd_network_get_interfaces(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    struct ifaddrs *ifap;
    int sock;

    (void)args;
    if (getifaddrs(&ifap) < 0) {
        ga_error(e, "getifaddrs failed: %s", strerror(errno));
        return;
    }
    sock = socket(PF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    *ret = vd_json_new_array();
    for (struct ifaddrs *ifa = ifap; ifa; ifa = ifa->ifa_next) {
        vd_json *info = interface(*ret, ifa->ifa_name, sock), *a = address(ifa), *list;

        if (!a)
            continue;
        list = vd_json_get(info, "ip-addresses");
        if (!list) {
            list = vd_json_new_array();
            vd_json_set(info, "ip-addresses", list);
        }
        vd_json_append(list, a);
        if (!vd_json_get(info, "statistics")) {
            vd_json *st = statistics(ifa->ifa_name);
            if (st)
                vd_json_set(info, "statistics", st);
        }
    }
    if (sock >= 0)
        close(sock);
    freeifaddrs(ifap);
}
