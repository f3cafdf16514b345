# Writes a C++ file defining `const char* const NAME` (in namespace NS) holding the text of
# IN, for pages served without external files:
#   cmake -DIN=page.html -DOUT=page.cc -DNAME=kPage -DNS=rmgen::coord -P EmbedFile.cmake
file(READ "${IN}" content)
string(FIND "${content}" ")RMGEN_EMBED\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} holds the raw string delimiter )RMGEN_EMBED\"")
endif()
file(WRITE "${OUT}.tmp"
     "// Generated from ${IN} by cmake/EmbedFile.cmake: edit that file instead.\n"
     "namespace ${NS} {\n"
     "extern const char* const ${NAME};\n"
     "const char* const ${NAME} = R\"RMGEN_EMBED(${content})RMGEN_EMBED\";\n"
     "}  // namespace ${NS}\n")
configure_file("${OUT}.tmp" "${OUT}" COPYONLY)  # rewritten only when it changed
file(REMOVE "${OUT}.tmp")
