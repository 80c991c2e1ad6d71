/*
 * LD_PRELOAD shim: Orthanc 1.10 has no bind-address option and listens on all interfaces.
 * This shim rewrites every bind() to the IPv4 wildcard address (0.0.0.0) into 127.0.0.1,
 * and every IPv6 wildcard (::) into ::1, so the test PACS is reachable from loopback only,
 * without root and without a network namespace.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind = NULL;
    if (real_bind == NULL) {
        real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    }
    if (addr != NULL && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in copy;
        memcpy(&copy, addr, sizeof(copy));
        if (copy.sin_addr.s_addr == htonl(INADDR_ANY)) {
            copy.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        }
        return real_bind(fd, (const struct sockaddr *)&copy, sizeof(copy));
    }
    if (addr != NULL && addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 copy6;
        memcpy(&copy6, addr, sizeof(copy6));
        if (memcmp(&copy6.sin6_addr, &in6addr_any, sizeof(struct in6_addr)) == 0) {
            copy6.sin6_addr = in6addr_loopback;
        }
        return real_bind(fd, (const struct sockaddr *)&copy6, sizeof(copy6));
    }
    return real_bind(fd, addr, len);
}
