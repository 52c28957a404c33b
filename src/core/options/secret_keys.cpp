// secret_keys.cpp — which options are secrets, and which need a Postgres privilege.
//
// Secrets: any key that names a password, secret, token, credential or private
// key material. When in doubt a key is treated as secret: a value wrongly shown
// as *** costs a user a look at sink_secret; a password wrongly shown leaks.
//
// Privileges: librdkafka reads files, runs kinit and loads shared libraries on
// behalf of whoever configured it. Those properties need the Postgres role that
// already grants the same power (pg_read_server_files, pg_execute_server_program,
// superuser), so batchkit_admin is not a way around them.
#include <algorithm>
#include <cctype>
#include <string>

#include "options/sink_config.hpp"

namespace bk::options {

namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

} // namespace

bool is_secret_key(std::string_view key) {
    std::string k = lower(key);
    for (const char *word : {"password", "passwd", "secret", "token", "credential", "private"})
        if (k.find(word) != std::string::npos)
            return true;
    // Key material inline (ssl.key.pem; ssl_key is librdkafka's internal form),
    // and OAUTHBEARER's config string, which carries the client's credentials.
    return ends_with(k, "key.pem") || k == "ssl_key" || k == "sasl.oauthbearer.config";
}

bk_option_privilege librdkafka_privilege(std::string_view key) {
    // Loads code into the backend (plugins, OpenSSL engines and providers) or
    // writes files (the consumer's legacy file offset store).
    if (key == "plugin.library.paths" || key == "ssl.engine.location" || key == "ssl.providers" ||
        key == "offset.store.path")
        return BK_PRIV_SUPERUSER;
    if (key == "sasl.kerberos.kinit.cmd")
        return BK_PRIV_EXECUTE_SERVER_PROGRAM;
    if (ends_with(key, ".location") || key == "sasl.kerberos.keytab" ||
        key == "ssl.ca.certificate.stores")
        return BK_PRIV_READ_SERVER_FILES;
    return BK_PRIV_NONE;
}

} // namespace bk::options
